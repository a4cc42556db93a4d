/**
 * Reads the guest's side of the verification network from the pcap that qemu's filter-dump writes:
 * DHCP exchanges and the IPv4 addresses the guest speaks from. What the guest did on the wire is
 * evidence that needs nothing from inside the guest.
 */

export interface DhcpMessage {
  /** Wall-clock time of the frame, ms since the epoch. */
  atMs: number;
  type: 'discover' | 'offer' | 'request' | 'decline' | 'ack' | 'nak' | 'release' | 'inform' | 'other';
  /** Client hardware address, lower-case colon form. */
  clientMac: string;
  /** `yiaddr`: the address offered or acknowledged. */
  yourAddress: string;
}

export interface GuestTraffic {
  /** Frames sent by the guest's MAC. */
  framesFromGuest: number;
  dhcp: DhcpMessage[];
  /** IPv4 source addresses of the guest's IP and ARP frames (0.0.0.0 excluded), first seen first. */
  guestAddresses: string[];
  /** Time of the first frame from the guest. */
  firstGuestFrameMs?: number;
}

const DHCP_TYPES: Record<number, DhcpMessage['type']> = {
  1: 'discover',
  2: 'offer',
  3: 'request',
  4: 'decline',
  5: 'ack',
  6: 'nak',
  7: 'release',
  8: 'inform',
};

function mac(b: Buffer, off: number): string {
  return [...b.subarray(off, off + 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

function ipv4(b: Buffer, off: number): string {
  return [...b.subarray(off, off + 4)].join('.');
}

function dhcpType(bootp: Buffer): DhcpMessage['type'] | undefined {
  // Options follow the 236-byte BOOTP header and the magic cookie 99.130.83.99.
  if (bootp.length < 240 || bootp.readUInt32BE(236) !== 0x63825363) return undefined;
  for (let i = 240; i < bootp.length; ) {
    const code = bootp[i];
    if (code === 0) {
      i++;
      continue;
    }
    if (code === 255 || i + 1 >= bootp.length) break;
    const len = bootp[i + 1];
    if (code === 53 && len >= 1) return DHCP_TYPES[bootp[i + 2]] ?? 'other';
    i += 2 + len;
  }
  return undefined;
}

/** Parses a little- or big-endian classic pcap of Ethernet frames; a truncated last record is ignored. */
export function readGuestTraffic(pcap: Buffer, guestMac: string): GuestTraffic {
  const out: GuestTraffic = { framesFromGuest: 0, dhcp: [], guestAddresses: [] };
  if (pcap.length < 24) return out;
  const magic = pcap.readUInt32LE(0);
  const le = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  const nanos = magic === 0xa1b23c4d || magic === 0x4d3cb2a1;
  if (!le && pcap.readUInt32BE(0) !== 0xa1b2c3d4 && pcap.readUInt32BE(0) !== 0xa1b23c4d) {
    throw new Error('not a pcap file (bad magic)');
  }
  const u32 = (off: number) => (le ? pcap.readUInt32LE(off) : pcap.readUInt32BE(off));
  const want = guestMac.toLowerCase();
  const seen = new Set<string>();
  for (let off = 24; off + 16 <= pcap.length; ) {
    const sec = u32(off);
    const frac = u32(off + 4);
    const capLen = u32(off + 8);
    const start = off + 16;
    if (start + capLen > pcap.length) break;
    const frame = pcap.subarray(start, start + capLen);
    off = start + capLen;
    const atMs = sec * 1000 + (nanos ? frac / 1e6 : frac / 1e3);
    if (frame.length < 14) continue;
    const src = mac(frame, 6);
    const etherType = frame.readUInt16BE(12);
    const fromGuest = src === want;
    if (fromGuest) {
      out.framesFromGuest++;
      out.firstGuestFrameMs ??= atMs;
    }
    const note = (addr: string) => {
      if (fromGuest && addr !== '0.0.0.0' && !seen.has(addr)) {
        seen.add(addr);
        out.guestAddresses.push(addr);
      }
    };
    if (etherType === 0x0806 && frame.length >= 42) {
      note(ipv4(frame, 28));
    } else if (etherType === 0x0800 && frame.length >= 34) {
      const ihl = (frame[14] & 0x0f) * 4;
      note(ipv4(frame, 26));
      if (frame[23] !== 17) continue;
      const udp = 14 + ihl;
      if (frame.length < udp + 8) continue;
      const sport = frame.readUInt16BE(udp);
      const dport = frame.readUInt16BE(udp + 2);
      if (!((sport === 68 && dport === 67) || (sport === 67 && dport === 68))) continue;
      const bootp = frame.subarray(udp + 8);
      const type = dhcpType(bootp);
      if (!type || bootp.length < 34) continue;
      out.dhcp.push({ atMs, type, clientMac: mac(bootp, 28), yourAddress: ipv4(bootp, 16) });
    }
  }
  return out;
}
