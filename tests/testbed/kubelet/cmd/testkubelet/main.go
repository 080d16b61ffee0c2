// Command testkubelet is a kubelet for Hawser's end-to-end tests.
//
// It registers a Node at 127.0.0.1 whose kubelet endpoint is this process,
// marks every pod scheduled to that node Running, and serves the kubelet
// streaming API (exec, attach, logs, port-forward) through virtual-kubelet's
// node/api handlers, so kube-apiserver's own proxying is exercised for real.
// "Containers" are local processes:
//   - exec runs the command on this machine in the pod's directory;
//   - a container whose spec has a command is started when the pod starts;
//     attach joins its stdin/stdout, and its output goes to the log file;
//   - logs read ROOT/logs/NAMESPACE/POD/CONTAINER.log, which tests may append to;
//   - port-forward to port P connects to 127.0.0.1:P.
//
// It prints "ready PORT" on stdout once the Node is registered.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"

	"os/signal"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig with rights to manage nodes and pods")
	nodeName := flag.String("node-name", "hawser-testbed", "name of the Node to register")
	root := flag.String("root", "", "directory for pod working directories and log files")
	flag.Parse()
	if *kubeconfig == "" || *root == "" {
		log.Fatal("testkubelet: --kubeconfig and --root are required")
	}
	if err := run(*kubeconfig, *nodeName, *root); err != nil {
		log.Fatalf("testkubelet: %v", err)
	}
}

func run(kubeconfig, nodeName, root string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	restConfig, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := listener.Addr().(*net.TCPAddr).Port
	tlsConfig, err := selfSignedTLS()
	if err != nil {
		return err
	}

	pods := newPodRunner(client, nodeName, root)
	mux := http.NewServeMux()
	api.AttachPodRoutes(api.PodHandlerConfig{
		RunInContainer:        pods.exec,
		AttachToContainer:     pods.attach,
		GetContainerLogs:      pods.logs,
		PortForward:           portForward,
		GetPods:               pods.list,
		GetPodsFromKubernetes: pods.list,
		StreamIdleTimeout:     4 * time.Hour,
		StreamCreationTimeout: 30 * time.Second,
	}, mux, false)
	server := &http.Server{Handler: mux, TLSConfig: tlsConfig, ReadHeaderTimeout: 30 * time.Second}
	go func() {
		if err := server.ServeTLS(listener, "", ""); err != nil && err != http.ErrServerClosed {
			log.Fatalf("testkubelet: serving: %v", err)
		}
	}()

	if err := registerNode(ctx, client, nodeName, port); err != nil {
		return fmt.Errorf("registering node %s: %w", nodeName, err)
	}
	if err := pods.start(ctx); err != nil {
		return err
	}
	fmt.Printf("ready %d\n", port)

	<-ctx.Done()
	pods.stopAll()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return server.Shutdown(shutdownCtx)
}
