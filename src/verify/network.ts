import { FailureType, RestoreError } from '../domain/errors';
import type { BootNetwork } from './report';

// The isolated user-mode network a verification boot gets: addresses from the request or defaults.

function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new RestoreError(FailureType.InvalidRequest, `'${ip}' is not an IPv4 address`);
  }
  return parts.reduce((a, p) => a * 256 + p, 0);
}

function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

export interface ResolvedNetwork {
  subnet: string;
  host: string;
  dhcpStart: string;
  guestAddress: string;
}

/** Fills in qemu's defaults and refuses addresses outside the subnet, naming them. */
export function resolveNetwork(n: BootNetwork = {}): ResolvedNetwork {
  const subnet = n.subnet ?? '10.0.2.0/24';
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(subnet);
  if (!m || Number(m[2]) < 8 || Number(m[2]) > 30) {
    throw new RestoreError(FailureType.InvalidRequest, `network.subnet '${subnet}' must be an IPv4 a.b.c.d/N with 8 <= N <= 30`);
  }
  const bits = Number(m[2]);
  const size = 2 ** (32 - bits);
  const base = ipToInt(m[1]) - (ipToInt(m[1]) % size);
  const inside = (label: string, ip: string) => {
    const v = ipToInt(ip);
    if (v <= base || v >= base + size - 1) {
      throw new RestoreError(FailureType.InvalidRequest, `network.${label} ${ip} is not a host address of ${subnet}`);
    }
    return ip;
  };
  const host = inside('host', n.host ?? intToIp(base + 2));
  const dhcpStart = inside('dhcpStart', n.dhcpStart ?? intToIp(base + 15));
  const guestAddress = inside('guestAddress', n.guestAddress ?? dhcpStart);
  return { subnet: `${intToIp(base)}/${bits}`, host, dhcpStart, guestAddress };
}
