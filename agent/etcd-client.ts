// The opossum breaker every agent call to etcd goes through. Validation errors never count as
// breaker failures: a bad document is not an unhealthy etcd.
import CircuitBreaker from 'opossum';
import { SslwallError } from '../schemas/errors.js';

export function isValidationError(err: unknown): boolean {
  return err instanceof SslwallError && (err.code === 'SSLWALL_E_CONFIG_INVALID' || err.code === 'SSLWALL_E_CONFIG_SIGNATURE');
}

/** A breaker around a network call: opens after repeated failures, probes again after resetTimeout. */
export function breaker<A extends unknown[], R>(name: string, fn: (...args: A) => Promise<R>): CircuitBreaker<A, R> {
  return new CircuitBreaker(fn, {
    name,
    timeout: 6000,
    errorThresholdPercentage: 50,
    volumeThreshold: 3,
    resetTimeout: 3000,
    errorFilter: isValidationError,
  });
}


export function breakerState(b: CircuitBreaker): 'closed' | 'open' | 'half_open' {
  return b.opened ? 'open' : b.halfOpen ? 'half_open' : 'closed';
}
