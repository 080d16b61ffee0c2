// Stand-in for k6's `k6/metrics`: every metric records what it is given in globalThis.k6stub.metrics.
class Metric {
  constructor(name) {
    this.name = name;
    globalThis.k6stub.metrics[name] = [];
  }
  add(value) {
    if (typeof value !== 'number' || Number.isNaN(value)) {
      throw new Error(`metric ${this.name}: add(${value}) is not a number`);
    }
    globalThis.k6stub.metrics[this.name].push(value);
  }
}
export class Counter extends Metric {}
export class Trend extends Metric {}
export class Rate extends Metric {}
export class Gauge extends Metric {}
export default { Counter, Trend, Rate, Gauge };
