package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// podRunner turns pods scheduled to this node into Running pods whose
// containers are local processes.
type podRunner struct {
	client   kubernetes.Interface
	nodeName string
	root     string
	lister   corelisters.PodLister

	mu      sync.Mutex
	running map[string]*runningPod // by namespace/name
}

type runningPod struct {
	uid        string
	containers map[string]*container
}

func newPodRunner(client kubernetes.Interface, nodeName, root string) *podRunner {
	return &podRunner{client: client, nodeName: nodeName, root: root, running: map[string]*runningPod{}}
}

func (r *podRunner) start(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(r.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + r.nodeName }))
	podInformer := factory.Core().V1().Pods()
	r.lister = podInformer.Lister()
	_, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { r.sync(ctx, obj.(*corev1.Pod)) },
		UpdateFunc: func(_, obj any) { r.sync(ctx, obj.(*corev1.Pod)) },
		DeleteFunc: func(obj any) {
			if pod, ok := obj.(*corev1.Pod); ok {
				r.forget(pod)
			}
		},
	})
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("cache for %v did not sync", typ)
		}
	}
	return nil
}

func (r *podRunner) list(context.Context) ([]*corev1.Pod, error) {
	return r.lister.List(labels.Everything())
}

func (r *podRunner) podDir(namespace, pod string) string {
	return filepath.Join(r.root, "pods", namespace, pod)
}

// LogPath is where a container's log lives; tests append to it.
func (r *podRunner) logPath(namespace, pod, container string) string {
	return filepath.Join(r.root, "logs", namespace, pod, container+".log")
}

func (r *podRunner) sync(ctx context.Context, pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	if pod.DeletionTimestamp != nil {
		r.forget(pod)
		// Play the kubelet's part of a graceful delete: containers are gone, remove the object.
		zero := int64(0)
		uid := pod.UID
		err := r.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name,
			metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			log.Printf("deleting pod %s: %v", key, err)
		}
		return
	}

	r.mu.Lock()
	_, known := r.running[key]
	if !known {
		rp := &runningPod{uid: string(pod.UID), containers: map[string]*container{}}
		for _, c := range pod.Spec.Containers {
			ctr, err := r.startContainer(pod, c)
			if err != nil {
				log.Printf("starting %s/%s: %v", key, c.Name, err)
				continue
			}
			rp.containers[c.Name] = ctr
		}
		r.running[key] = rp
	}
	r.mu.Unlock()

	if pod.Status.Phase != corev1.PodRunning {
		if err := r.markRunning(ctx, pod); err != nil {
			log.Printf("marking %s running: %v", key, err)
		}
	}
}

func (r *podRunner) startContainer(pod *corev1.Pod, spec corev1.Container) (*container, error) {
	dir := r.podDir(pod.Namespace, pod.Name)
	logPath := r.logPath(pod.Namespace, pod.Name, spec.Name)
	for _, d := range []string{dir, filepath.Dir(logPath)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	argv := append(append([]string{}, spec.Command...), spec.Args...)
	if len(spec.Command) == 0 {
		// No command: nothing runs, but logs and exec work.
		logFile.Close()
		return &container{}, nil
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = podEnv(pod)
	return startProcess(cmd, logFile, spec.Stdin)
}

func podEnv(pod *corev1.Pod) []string {
	return append(os.Environ(), "HOSTNAME="+pod.Name, "POD_NAMESPACE="+pod.Namespace)
}

func (r *podRunner) markRunning(ctx context.Context, pod *corev1.Pod) error {
	now := metav1.Now()
	updated := pod.DeepCopy()
	updated.Status.Phase = corev1.PodRunning
	updated.Status.HostIP = "127.0.0.1"
	updated.Status.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	updated.Status.PodIP = "127.0.0.1"
	updated.Status.PodIPs = []corev1.PodIP{{IP: "127.0.0.1"}}
	updated.Status.StartTime = &now
	updated.Status.Conditions = nil
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		updated.Status.Conditions = append(updated.Status.Conditions,
			corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	updated.Status.ContainerStatuses = nil
	started := true
	for _, c := range pod.Spec.Containers {
		updated.Status.ContainerStatuses = append(updated.Status.ContainerStatuses, corev1.ContainerStatus{
			Name:        c.Name,
			Image:       c.Image,
			ImageID:     "testkubelet://" + c.Image,
			ContainerID: fmt.Sprintf("testkubelet://%s/%s/%s", pod.Namespace, pod.Name, c.Name),
			Ready:       true,
			Started:     &started,
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	_, err := r.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		// A newer version is on its way through the informer; its sync retries.
		return nil
	}
	return err
}

func (r *podRunner) forget(pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	r.mu.Lock()
	rp := r.running[key]
	if rp != nil && rp.uid == string(pod.UID) {
		delete(r.running, key)
	} else {
		rp = nil
	}
	r.mu.Unlock()
	if rp != nil {
		for _, c := range rp.containers {
			c.stop()
		}
	}
}

func (r *podRunner) stopAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, rp := range r.running {
		for _, c := range rp.containers {
			c.stop()
		}
		delete(r.running, key)
	}
}

func (r *podRunner) container(namespace, pod, name string) (*container, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rp := r.running[namespace+"/"+pod]
	if rp == nil {
		return nil, fmt.Errorf("pod %s/%s is not running on this node", namespace, pod)
	}
	c := rp.containers[name]
	if c == nil {
		return nil, fmt.Errorf("container %s not found in pod %s/%s", name, namespace, pod)
	}
	return c, nil
}
