// The Windows Firewall rules preparation turns on, in the form the SYSTEM hive stores them.

export const RDP_RULE_TCP = 'RemoteDesktop-UserMode-In-TCP';
export const RDP_RULE_UDP = 'RemoteDesktop-UserMode-In-UDP';

/** The Remote Desktop inbound rules as Windows Server 2022 ships them (Active=FALSE until RDP is enabled). */
export function remoteDesktopRule(name: string, active: boolean): string | undefined {
  const a = active ? 'TRUE' : 'FALSE';
  const svchost = 'App=%SystemRoot%\\system32\\svchost.exe|Svc=termservice';
  switch (name) {
    case RDP_RULE_TCP:
      return `v2.30|Action=Allow|Active=${a}|Dir=In|Protocol=6|LPort=3389|${svchost}|Name=@FirewallAPI.dll,-28775|Desc=@FirewallAPI.dll,-28756|EmbedCtxt=@FirewallAPI.dll,-28752|`;
    case RDP_RULE_UDP:
      return `v2.30|Action=Allow|Active=${a}|Dir=In|Protocol=17|LPort=3389|${svchost}|Name=@FirewallAPI.dll,-28776|Desc=@FirewallAPI.dll,-28777|EmbedCtxt=@FirewallAPI.dll,-28752|`;
    default:
      return undefined;
  }
}
