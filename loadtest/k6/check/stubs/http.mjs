// Stand-in for k6's `k6/http`: get() records the request in globalThis.k6stub.requests and
// answers with what globalThis.k6stub.answer(url, params) returns ({status, body, duration}).
function response(url, params) {
  const a = globalThis.k6stub.answer(url, params);
  return {
    url,
    status: a.status,
    body: a.body,
    error: a.status === 0 ? 'connection refused' : '',
    timings: { duration: a.duration ?? 1 },
    json() {
      return JSON.parse(a.body);
    },
  };
}
export function get(url, params) {
  globalThis.k6stub.requests.push({ method: 'GET', url, params });
  return response(url, params);
}
export default { get };
