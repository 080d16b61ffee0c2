// Checks the k6 scripts without k6 (its licence keeps it off these machines): `node --check` on
// each, then kubectl-mix.js run with stand-ins for k6's modules (stubs/) against canned answers:
// its options name exported functions, every request carries the token and a `kind` tag, the
// paths are the mix the Rust driver's `k6mix` sends, bad settings fail with a clear message.
// Exit 0 if all hold; else one line per problem and exit 1.
//
//   node loadtest/k6/check/check.mjs            # the checks (CI runs this: .ci/run)
//   node loadtest/k6/check/check.mjs --paths    # the mix's paths as JSON (the Rust driver's test reads it)
//   node loadtest/k6/check/check.mjs --live     # one iteration of each scenario against a real relay,
//                                               # k6's HTTP done by curl; settings as for k6 (README.md)

import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { register } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

register('./hooks.mjs', import.meta.url);

const here = dirname(fileURLToPath(import.meta.url));
const scripts = join(here, '..');
const problems = [];
const expect = (ok, what) => {
  if (!ok) problems.push(what);
};

const SERVER = 'https://relay.example:8443/clusters/demo';
const WATCH_SECONDS = 7;
const pod = (name) => ({ kind: 'Pod', apiVersion: 'v1', metadata: { name, namespace: 'team-a' } });

/** Canned answers, as kube-apiserver gives them. */
function answer(url) {
  const path = url.slice(SERVER.length);
  if (path.startsWith('/api/v1/namespaces/team-a/pods?watch=1')) {
    const events = [pod('a'), pod('b')].map((object) => JSON.stringify({ type: 'ADDED', object }));
    return { status: 200, body: events.join('\n') + '\n', duration: WATCH_SECONDS * 1000 };
  }
  if (path.startsWith('/api/v1/namespaces/team-a/pods?')) {
    return { status: 200, body: JSON.stringify({ kind: 'PodList', items: [pod('a'), pod('b')] }) };
  }
  if (path.startsWith('/api/v1/namespaces/team-a/pods/')) {
    return { status: 200, body: JSON.stringify(pod(path.split('/').pop())) };
  }
  if (path.startsWith('/api/v1/configmaps?')) {
    return { status: 200, body: JSON.stringify({ kind: 'ConfigMapList', items: [] }) };
  }
  return { status: 404, body: '{"kind":"Status"}' };
}

let loads = 0;
/** Imports `file` afresh (a new module instance) with `env` as __ENV; returns it, or the error it threw. */
async function load(file, env, files = {}) {
  globalThis.k6stub = { requests: [], checks: [], metrics: {}, answer };
  globalThis.__ENV = env;
  globalThis.open = (path) => {
    if (!(path in files)) throw new Error(`open ${path}: no such file`);
    return files[path];
  };
  loads += 1;
  try {
    return { module: await import(`${pathToFileURL(file).href}?load=${loads}`) };
  } catch (error) {
    return { error };
  }
}

const env = {
  HAWSER_RELAY: 'https://relay.example:8443/',
  HAWSER_CLUSTER: 'demo',
  HAWSER_TOKEN_FILE: 'token',
  HAWSER_NAMESPACE: 'team-a',
  K6MIX_WATCH_SECONDS: String(WATCH_SECONDS),
};

async function checkMix(file) {
  const { module: mix, error } = await load(file, env, { token: 'tok-123\n' });
  if (error) {
    problems.push(`${file}: loading it failed: ${error.message}`);
    return;
  }
  for (const [name, scenario] of Object.entries(mix.options.scenarios)) {
    expect(typeof mix[scenario.exec] === 'function', `scenario ${name}: exec ${scenario.exec} is not an exported function`);
  }
  for (const [metric, rules] of Object.entries(mix.options.thresholds)) {
    expect(Array.isArray(rules) && rules.every((r) => typeof r === 'string'), `threshold ${metric}: not a list of strings`);
  }
  const data = mix.setup();
  expect(JSON.stringify(data) === '{"pods":["a","b"]}', `setup() returned ${JSON.stringify(data)}`);
  mix.kubectl(data);
  mix.watch();
  const { requests, checks, metrics } = globalThis.k6stub;
  const paths = requests.map((r) => r.url.slice(SERVER.length));
  expect(requests.every((r) => r.url.startsWith(SERVER)), `a request left ${SERVER}: ${requests.map((r) => r.url)}`);
  expect(
    requests.every((r) => r.params.headers.Authorization === 'Bearer tok-123'),
    'a request lacks the token from HAWSER_TOKEN_FILE (trimmed)',
  );
  const kinds = requests.map((r) => r.params.tags.kind);
  expect(
    JSON.stringify(kinds) === '["setup","list_pods","get_pod","list_configmaps","watch"]',
    `requests tagged ${kinds}`,
  );
  for (const kind of kinds.filter((k) => k !== 'setup')) {
    expect(`http_req_duration{kind:${kind}}` in mix.options.thresholds, `no duration threshold for kind ${kind}`);
  }
  expect(
    /^\/api\/v1\/namespaces\/team-a\/pods\/[ab]$/.test(paths[2]),
    `get pod asked for ${paths[2]}, not a pod of the list`,
  );
  expect(paths[4] === `/api/v1/namespaces/team-a/pods?watch=1&timeoutSeconds=${WATCH_SECONDS}`, `watch path ${paths[4]}`);
  expect(
    requests[4].params.timeout === `${WATCH_SECONDS + 30}s`,
    `the watch's client timeout ${requests[4].params.timeout} does not outlast timeoutSeconds`,
  );
  expect(checks.length > 0 && checks.every((c) => c.ok), `failed checks: ${JSON.stringify(checks.filter((c) => !c.ok))}`);
  expect(JSON.stringify(metrics.watch_events) === '[2]', `watch_events recorded ${JSON.stringify(metrics.watch_events)}`);

  // A watch the relay cut short, or an error event, fails its checks.
  globalThis.k6stub.checks = [];
  globalThis.k6stub.answer = (url) => ({ ...answer(url), duration: 2000 });
  mix.watch();
  expect(
    globalThis.k6stub.checks.some((c) => c.name === 'watch: held until timeoutSeconds' && !c.ok),
    'a watch ended after 2 s of 7 passed its checks',
  );
  globalThis.k6stub.checks = [];
  globalThis.k6stub.answer = () => ({ status: 200, body: '{"type":"ERROR","object":{"kind":"Status"}}\n', duration: 7000 });
  mix.watch();
  expect(globalThis.k6stub.checks.some((c) => !c.ok), 'a watch that sent an ERROR event passed its checks');
  // setup() stops the run when the namespace has nothing to get.
  globalThis.k6stub.answer = () => ({ status: 200, body: '{"kind":"PodList","items":[]}' });
  expect(/has no pods/.test(errorOf(() => mix.setup())), 'setup() with no pods did not say so');

  // Bad settings: one clear error at load time.
  const bad = [
    [{ ...env, HAWSER_RELAY: '' }, /set HAWSER_RELAY/],
    [{ ...env, HAWSER_RELAY: 'http://relay:8443' }, /must be an https:\/\/ URL/],
    [{ ...env, HAWSER_CLUSTER: 'Bad_Name' }, /is not a cluster name/],
    [{ ...env, HAWSER_TOKEN_FILE: '' }, /set HAWSER_TOKEN or HAWSER_TOKEN_FILE/],
    [{ ...env, K6MIX_VUS: 'ten' }, /K6MIX_VUS=ten is not a positive whole number/],
    [{ ...env, K6MIX_WATCH_SECONDS: '0' }, /K6MIX_WATCH_SECONDS=0/],
  ];
  for (const [badEnv, message] of bad) {
    const { error: e } = await load(file, badEnv, { token: 'tok-123\n' });
    expect(e && message.test(e.message), `with ${JSON.stringify(badEnv)}: expected an error matching ${message}, got ${e ? e.message : 'none'}`);
  }
  const { module: direct } = await load(file, { HAWSER_SERVER: `${SERVER}/`, HAWSER_TOKEN: 'tok' });
  expect(direct !== undefined, 'HAWSER_SERVER alone (with HAWSER_TOKEN) did not load');
}

function errorOf(fn) {
  try {
    fn();
    return '';
  } catch (e) {
    return e.message;
  }
}

/** The mix's paths with the namespace `default`, a pod NAME and a 30 s watch, for the Rust driver's test. */
async function paths(file) {
  const { module: mix, error } = await load(file, { HAWSER_SERVER: SERVER, HAWSER_TOKEN: 'tok', K6MIX_WATCH_SECONDS: '30' });
  if (error) throw error;
  const p = mix.PATHS;
  return { list_pods: p.listPods, get_pod: p.getPod('NAME'), list_configmaps: p.listConfigmaps, watch: p.watchPods };
}

/** k6's http.get done by curl, synchronously as k6 does it; status 0 when curl fails. */
function curl(url, params) {
  const args = ['-sS', '-o', '-', '-w', '\n%{http_code} %{time_total}', '--max-time', String(parseInt(params.timeout, 10))];
  for (const [k, v] of Object.entries(params.headers)) args.push('-H', `${k}: ${v}`);
  if (process.env.SSL_CERT_FILE) args.push('--cacert', process.env.SSL_CERT_FILE);
  let out;
  try {
    out = execFileSync('curl', [...args, url], { encoding: 'utf8', maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    return { status: 0, body: String(e.stderr || e.message) };
  }
  const cut = out.lastIndexOf('\n');
  const [code, secs] = out.slice(cut + 1).split(' ');
  return { status: Number(code), body: out.slice(0, cut), duration: Number(secs) * 1000 };
}

const files = readdirSync(scripts)
  .filter((f) => f.endsWith('.js'))
  .map((f) => join(scripts, f));
if (process.argv.includes('--live')) {
  globalThis.open = (path) => readFileSync(path, 'utf8');
  globalThis.k6stub = { requests: [], checks: [], metrics: {}, answer: curl };
  globalThis.__ENV = process.env;
  const mix = await import(pathToFileURL(join(scripts, 'kubectl-mix.js')).href);
  const data = mix.setup();
  mix.kubectl(data);
  mix.watch();
  for (const r of globalThis.k6stub.requests) console.log(`${r.params.tags.kind}: GET ${r.url}`);
  const failed = globalThis.k6stub.checks.filter((c) => !c.ok);
  for (const c of globalThis.k6stub.checks) console.log(`check ${c.ok ? 'ok    ' : 'FAILED'} ${c.name}`);
  console.log(`watch_events: ${globalThis.k6stub.metrics.watch_events}`);
  if (failed.length > 0) process.exit(1);
} else if (process.argv.includes('--paths')) {
  console.log(JSON.stringify(await paths(join(scripts, 'kubectl-mix.js'))));
} else {
  expect(files.length > 0, `no k6 scripts in ${scripts}`);
  for (const file of files) {
    try {
      execFileSync(process.execPath, ['--check', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      problems.push(`${file}: node --check: ${String(e.stderr).trim()}`);
    }
  }
  if (problems.length === 0) await checkMix(join(scripts, 'kubectl-mix.js'));
  for (const p of problems) console.error(`k6 check: ${p}`);
  if (problems.length > 0) process.exit(1);
  console.log(`k6 check: ${files.length} script(s) pass node --check; kubectl-mix.js behaves (stubbed k6, canned answers)`);
}
