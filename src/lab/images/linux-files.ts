import { createHash } from 'node:crypto';

// The files of the demo guests: ids seeded from the options, and configuration as a VMware-era guest of
// each distro family has it.

export type Flavor = 'ubuntu' | 'rhel' | 'debian';

export function digest(seed: string, label: string): Buffer {
  return createHash('sha256').update(`${seed}\0${label}`).digest();
}

/** An RFC 4122 version-4 shaped UUID derived from the seed. */
export function seededUuid(seed: string, label: string): string {
  const b = digest(seed, label).subarray(0, 16);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function seededMac(seed: string): string {
  const b = digest(seed, 'mac');
  // 00:50:56 is VMware's OUI, which is what these guests came from.
  return ['00', '50', '56', ...[b[0] & 0x3f, b[1], b[2]].map((x) => x.toString(16).padStart(2, '0'))].join(':');
}

export function osRelease(flavor: Flavor): string {
  switch (flavor) {
    case 'ubuntu':
      return [
        'PRETTY_NAME="Ubuntu 22.04.4 LTS"',
        'NAME="Ubuntu"',
        'VERSION_ID="22.04"',
        'VERSION="22.04.4 LTS (Jammy Jellyfish)"',
        'VERSION_CODENAME=jammy',
        'ID=ubuntu',
        'ID_LIKE=debian',
        'HOME_URL="https://www.ubuntu.com/"',
        'UBUNTU_CODENAME=jammy',
        '',
      ].join('\n');
    case 'rhel':
      return [
        'NAME="Rocky Linux"',
        'VERSION="8.9 (Green Obsidian)"',
        'ID="rocky"',
        'ID_LIKE="rhel centos fedora"',
        'VERSION_ID="8.9"',
        'PLATFORM_ID="platform:el8"',
        'PRETTY_NAME="Rocky Linux 8.9 (Green Obsidian)"',
        'ANSI_COLOR="0;32"',
        'CPE_NAME="cpe:/o:rocky:rocky:8:GA"',
        '',
      ].join('\n');
    case 'debian':
      return [
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"',
        'NAME="Debian GNU/Linux"',
        'VERSION_ID="12"',
        'VERSION="12 (bookworm)"',
        'VERSION_CODENAME=bookworm',
        'ID=debian',
        'HOME_URL="https://www.debian.org/"',
        '',
      ].join('\n');
  }
}

export const SSH_UNIT_DEBIAN = `[Unit]
Description=OpenBSD Secure Shell server
Documentation=man:sshd(8) man:sshd_config(5)
After=network.target auditd.service
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStartPre=/usr/sbin/sshd -t
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/usr/sbin/sshd -t
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartPreventExitStatus=255
Type=notify
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755

[Install]
WantedBy=multi-user.target
Alias=sshd.service
`;

export const SSH_UNIT_RHEL = `[Unit]
Description=OpenSSH server daemon
Documentation=man:sshd(8) man:sshd_config(5)
After=network.target sshd-keygen.target
Wants=sshd-keygen.target

[Service]
Type=notify
EnvironmentFile=-/etc/crypto-policies/back-ends/opensshserver.config
EnvironmentFile=-/etc/sysconfig/sshd
ExecStart=/usr/sbin/sshd -D $OPTIONS $CRYPTO_POLICY
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartSec=42s

[Install]
WantedBy=multi-user.target
`;

export const WAAGENT_UNIT = `[Unit]
Description=Azure Linux Agent
Wants=network-online.target sshd.service sshd-keygen.service
After=network-online.target
ConditionFileIsExecutable=/usr/sbin/waagent
ConditionPathExists=/etc/waagent.conf

[Service]
Type=simple
ExecStart=/usr/bin/python3 -u /usr/sbin/waagent -daemon
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`;

export const WAAGENT_SCRIPT = `#!/usr/bin/env python3
# Microsoft Azure Linux Agent (demo stub of the packaged entry point)
import sys
from azurelinuxagent.agent import main
if __name__ == '__main__':
    sys.exit(main())
`;

export const WAAGENT_CONF = `# Microsoft Azure Linux Agent Configuration
Extensions.Enabled=y
Provisioning.Agent=auto
Provisioning.DeleteRootPassword=n
Provisioning.RegenerateSshHostKeyPair=n
ResourceDisk.Format=y
ResourceDisk.Filesystem=ext4
ResourceDisk.MountPoint=/mnt/resource
ResourceDisk.EnableSwap=n
Logs.Verbose=n
OS.EnableFirewall=y
AutoUpdate.Enabled=y
`;

export const SSHD_CONFIG = `# See sshd_config(5) for details.
Include /etc/ssh/sshd_config.d/*.conf
Port 22
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
`;

export function ufwRules(v6: boolean): string {
  const chain = v6 ? 'ufw6' : 'ufw';
  const any = v6 ? '::/0' : '0.0.0.0/0';
  return `*filter
:${chain}-user-input - [0:0]
:${chain}-user-output - [0:0]
:${chain}-user-forward - [0:0]
:${chain}-before-logging-input - [0:0]
:${chain}-before-logging-output - [0:0]
:${chain}-before-logging-forward - [0:0]
:${chain}-user-logging-input - [0:0]
:${chain}-user-logging-output - [0:0]
:${chain}-user-logging-forward - [0:0]
:${chain}-after-logging-input - [0:0]
:${chain}-after-logging-output - [0:0]
:${chain}-after-logging-forward - [0:0]
:${chain}-logging-deny - [0:0]
:${chain}-logging-allow - [0:0]
:${chain}-user-limit - [0:0]
:${chain}-user-limit-accept - [0:0]
### RULES ###

### tuple ### allow tcp 443 ${any} any ${any} in
-A ${chain}-user-input -p tcp --dport 443 -j ACCEPT

### tuple ### allow tcp 9100 ${any} any ${v6 ? '::/0' : '10.0.0.0/8'} in
-A ${chain}-user-input -p tcp --dport 9100 ${v6 ? '' : '-s 10.0.0.0/8 '}-j ACCEPT

### END RULES ###

### LOGGING ###
-A ${chain}-after-logging-input -j LOG --log-prefix "[UFW BLOCK] " -m limit --limit 3/min --limit-burst 10
-A ${chain}-after-logging-forward -j LOG --log-prefix "[UFW BLOCK] " -m limit --limit 3/min --limit-burst 10
-I ${chain}-logging-deny -j RETURN -m addrtype --dst-type BROADCAST
-A ${chain}-logging-deny -j LOG --log-prefix "[UFW BLOCK] " -m limit --limit 3/min --limit-burst 10
-A ${chain}-logging-allow -j LOG --log-prefix "[UFW ALLOW] " -m limit --limit 3/min --limit-burst 10
### END LOGGING ###

### RATE LIMITING ###
-A ${chain}-user-limit -m limit --limit 3/minute -j LOG --log-prefix "[UFW LIMIT BLOCK] "
-A ${chain}-user-limit -j REJECT
-A ${chain}-user-limit-accept -j ACCEPT
### END RATE LIMITING ###
COMMIT
`;
}

export function iptablesRules(v6: boolean): string {
  return `# Generated by iptables-save v1.8.9 on Fri Mar  1 12:00:00 2024
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p ${v6 ? 'ipv6-icmp' : 'icmp'} -j ACCEPT
-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT
-A INPUT -s ${v6 ? 'fd00::/8' : '10.0.0.0/8'} -p tcp -m tcp --dport 5432 -j ACCEPT
-A INPUT -m limit --limit 5/min -j LOG --log-prefix "iptables-dropped: "
-A INPUT -j DROP
COMMIT
# Completed on Fri Mar  1 12:00:00 2024
`;
}

export const FIREWALLD_PUBLIC = `<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>Public</short>
  <description>For use in public areas. You do not trust the other computers on networks to not harm your computer. Only selected incoming connections are accepted.</description>
  <service name="dhcpv6-client"/>
  <service name="cockpit"/>
  <service name="https"/>
  <port port="9100" protocol="tcp"/>
</zone>
`;
