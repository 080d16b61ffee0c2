// kubectl-like load through a Hawser relay, for k6 (https://k6.io). README.md beside this file
// says how to run it; the Rust load driver runs the same mix (`--scenarios k6mix`).
//
// Two scenarios run side by side for K6MIX_DURATION:
// - `kubectl`: K6MIX_VUS users, each looping `kubectl get pods -n NS`, `kubectl get pod NAME -n NS`
//   (a pod from that list) and `kubectl get configmaps -A`;
// - `watch`: K6MIX_WATCHERS users, each holding `kubectl get pods -n NS -w` open for
//   K6MIX_WATCH_SECONDS (the apiserver ends it then: `timeoutSeconds`), then opening the next.
// Requests go to SERVER/api/..., SERVER being the relay's URL for the cluster,
// https://RELAY/clusters/NAME, as `hawser kubeconfig` writes it.

import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

function env(name, fallback) {
  const value = __ENV[name];
  return value === undefined || value === '' ? fallback : value;
}

function positive(name, fallback) {
  const raw = env(name, String(fallback));
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) {
    throw new Error(`${name}=${raw} is not a positive whole number`);
  }
  return n;
}

function server() {
  const direct = env('HAWSER_SERVER', '');
  if (direct !== '') {
    return direct.replace(/\/+$/, '');
  }
  const relay = env('HAWSER_RELAY', '');
  const cluster = env('HAWSER_CLUSTER', '');
  if (relay === '' || cluster === '') {
    throw new Error(
      'set HAWSER_RELAY (https://HOST:PORT) and HAWSER_CLUSTER (the cluster name), or HAWSER_SERVER (https://HOST:PORT/clusters/NAME)',
    );
  }
  if (!relay.startsWith('https://')) {
    throw new Error(`HAWSER_RELAY=${relay} must be an https:// URL`);
  }
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(cluster)) {
    throw new Error(`HAWSER_CLUSTER=${cluster} is not a cluster name`);
  }
  return `${relay.replace(/\/+$/, '')}/clusters/${cluster}`;
}

function token() {
  const inline = env('HAWSER_TOKEN', '');
  // open() reads files only here, in the init context.
  const value = inline !== '' ? inline : env('HAWSER_TOKEN_FILE', '') !== '' ? open(env('HAWSER_TOKEN_FILE', '')) : '';
  if (value.trim() === '') {
    throw new Error(
      'set HAWSER_TOKEN or HAWSER_TOKEN_FILE: a token from `hawser token issue --config RELAY.toml --subject NAME`',
    );
  }
  return value.trim();
}

const SERVER = server();
const TOKEN = token();
const NAMESPACE = env('HAWSER_NAMESPACE', 'default');
const VUS = positive('K6MIX_VUS', 10);
const WATCHERS = positive('K6MIX_WATCHERS', 5);
const WATCH_SECONDS = positive('K6MIX_WATCH_SECONDS', 30);
const DURATION = env('K6MIX_DURATION', '1m');

/** The mix's request paths, after SERVER; the Rust driver's k6mix sends the same ones. */
export const PATHS = {
  listPods: `/api/v1/namespaces/${NAMESPACE}/pods?limit=500`,
  getPod: (name) => `/api/v1/namespaces/${NAMESPACE}/pods/${name}`,
  listConfigmaps: '/api/v1/configmaps?limit=500',
  watchPods: `/api/v1/namespaces/${NAMESPACE}/pods?watch=1&timeoutSeconds=${WATCH_SECONDS}`,
};

const watchEvents = new Counter('watch_events');

export const options = {
  scenarios: {
    kubectl: { executor: 'constant-vus', exec: 'kubectl', vus: VUS, duration: DURATION },
    watch: {
      executor: 'constant-vus',
      exec: 'watch',
      vus: WATCHERS,
      duration: DURATION,
      // A watch begun just before the end finishes at its timeoutSeconds.
      gracefulStop: `${WATCH_SECONDS + 15}s`,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    'http_req_duration{kind:list_pods}': ['p(95)<500'],
    'http_req_duration{kind:get_pod}': ['p(95)<300'],
    'http_req_duration{kind:list_configmaps}': ['p(95)<1000'],
    // Watches end when the apiserver ends them, not earlier (checked per watch) and not much later.
    'http_req_duration{kind:watch}': [`max<${(WATCH_SECONDS + 10) * 1000}`],
    watch_events: ['count>0'],
  },
};

function params(kind, timeoutSeconds) {
  return {
    headers: { Authorization: `Bearer ${TOKEN}`, Accept: 'application/json', 'User-Agent': 'hawser-k6-mix' },
    tags: { kind },
    timeout: `${timeoutSeconds}s`,
  };
}

function json(res) {
  try {
    return res.json();
  } catch (_) {
    return null;
  }
}

/** Fails the run at once when the cluster cannot be reached or the namespace has no pod to get. */
export function setup() {
  const res = http.get(SERVER + PATHS.listPods, params('setup', 30));
  if (res.status !== 200) {
    throw new Error(`GET ${SERVER}${PATHS.listPods}: status ${res.status} ${res.error || ''}: ${String(res.body).slice(0, 200)}`);
  }
  const list = json(res);
  if (list === null || !Array.isArray(list.items) || list.items.length === 0) {
    throw new Error(`namespace ${NAMESPACE} has no pods to get: create one, or set HAWSER_NAMESPACE`);
  }
  return { pods: list.items.map((p) => p.metadata.name) };
}

/** One `kubectl` iteration: list pods, get one of them, list configmaps in all namespaces. */
export function kubectl(data) {
  const pods = http.get(SERVER + PATHS.listPods, params('list_pods', 60));
  const list = json(pods);
  check(pods, { 'list pods: 200 PodList': (r) => r.status === 200 && list !== null && list.kind === 'PodList' });
  const names = list !== null && Array.isArray(list.items) && list.items.length > 0 ? list.items.map((p) => p.metadata.name) : data.pods;
  const name = names[Math.floor(Math.random() * names.length)];
  const pod = http.get(SERVER + PATHS.getPod(name), params('get_pod', 60));
  check(pod, { 'get pod: 200 Pod': (r) => r.status === 200 && (json(r) || {}).kind === 'Pod' });
  const cms = http.get(SERVER + PATHS.listConfigmaps, params('list_configmaps', 60));
  check(cms, { 'list configmaps: 200 ConfigMapList': (r) => r.status === 200 && (json(r) || {}).kind === 'ConfigMapList' });
}

/** One watch, held until the apiserver ends it after K6MIX_WATCH_SECONDS. */
export function watch() {
  const res = http.get(SERVER + PATHS.watchPods, params('watch', WATCH_SECONDS + 30));
  const lines = String(res.body || '').split('\n').filter((l) => l !== '');
  const events = lines.filter((l) => {
    const e = (() => {
      try {
        return JSON.parse(l);
      } catch (_) {
        return null;
      }
    })();
    return e !== null && typeof e.type === 'string' && e.type !== 'ERROR';
  });
  watchEvents.add(events.length);
  check(res, {
    'watch: 200': (r) => r.status === 200,
    'watch: every line an event': () => events.length === lines.length,
    // A relay or balancer timeout would end the watch early.
    'watch: held until timeoutSeconds': (r) => r.timings.duration >= (WATCH_SECONDS - 1) * 1000,
  });
}
