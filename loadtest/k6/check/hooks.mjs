// Module hooks for check.mjs: `k6` and `k6/*` imports resolve to the stand-ins in stubs/.
export async function resolve(specifier, context, next) {
  if (specifier === 'k6' || specifier.startsWith('k6/')) {
    const file = specifier === 'k6' ? 'k6.mjs' : `${specifier.slice(3).replaceAll('/', '-')}.mjs`;
    return { url: new URL(`./stubs/${file}`, import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
