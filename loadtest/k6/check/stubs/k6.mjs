// Stand-in for k6's `k6` module: check() records its outcomes in globalThis.k6stub.checks.
export function check(value, sets) {
  let all = true;
  for (const [name, fn] of Object.entries(sets)) {
    const ok = Boolean(fn(value));
    globalThis.k6stub.checks.push({ name, ok });
    all = all && ok;
  }
  return all;
}
export function sleep() {}
export function fail(message) {
  throw new Error(message);
}
export default { check, sleep, fail };
