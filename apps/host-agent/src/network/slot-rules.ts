import { GATEWAY_IP, GUEST_IP, SLOT_NFT_TABLE, SLOT_UPLINK_NAME, TAP_NAME } from './network.constants';
import type { SlotAddresses, SlotPool } from './slot-addressing';

/**
 * nftables rulesets, rendered as `nft -f` input. Each one replaces its whole table in a single transaction
 * (`add` + `delete` + define), so applying is atomic and idempotent, and removal is exact: the agent owns the tables
 * outright and never edits chains it did not create.
 *
 * Two layers, so a mistake in one does not open a sandbox up:
 *  - inside each slot namespace, table `inet kiln`: DNAT hostAddress -> guest, SNAT both ways, and the guest's egress
 *    filter (chain `egress`): platform isolation first, then the per-sandbox allow and deny sets;
 *  - on the host, table `inet <prefix>`: traffic arriving from slot veths may not reach host services or other
 *    slots, nothing but replies may enter a slot through the host, and slot traffic leaving the host is masqueraded.
 */

export function hostRuleset(namePrefix: string, pool: SlotPool): string {
  const veths = `"${namePrefix}-v*"`;
  return `add table inet ${namePrefix}
delete table inet ${namePrefix}
table inet ${namePrefix} {
  chain input {
    type filter hook input priority filter - 10; policy accept;
    iifname ${veths} ct state established,related accept
    iifname ${veths} counter reject with icmpx type admin-prohibited
  }
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname ${veths} oifname ${veths} counter reject with icmpx type admin-prohibited
    oifname ${veths} ct state established,related accept
    oifname ${veths} counter drop
    iifname ${veths} meta nfproto ipv6 counter drop
    iifname ${veths} ip daddr ${pool.cidr} counter reject with icmpx type admin-prohibited
    iifname ${veths} jump egress
  }
  chain egress {
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname != ${veths} ip saddr ${pool.cidr} masquerade
  }
}
`;
}

export function removeHostRuleset(namePrefix: string): string {
  return `add table inet ${namePrefix}\ndelete table inet ${namePrefix}\n`;
}

export function slotRuleset(addresses: SlotAddresses, pool: SlotPool): string {
  const uplink = `"${SLOT_UPLINK_NAME}"`;
  const tap = `"${TAP_NAME}"`;
  return `add table inet ${SLOT_NFT_TABLE}
delete table inet ${SLOT_NFT_TABLE}
table inet ${SLOT_NFT_TABLE} {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname ${uplink} ip daddr ${addresses.hostAddress} dnat ip to ${GUEST_IP}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname ${tap} ip daddr ${GUEST_IP} ct status dnat snat ip to ${GATEWAY_IP}
    oifname ${uplink} ip saddr ${GUEST_IP} snat ip to ${addresses.hostAddress}
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname ${uplink} oifname ${tap} ip daddr ${GUEST_IP} ct status dnat accept
    iifname ${tap} oifname ${uplink} ip saddr ${GUEST_IP} meta nfproto ipv4 jump egress
    counter reject with icmpx type admin-prohibited
  }
  set ${EGRESS_ALLOW_SET} {
    type ipv4_addr; flags interval; auto-merge;
  }
  set ${EGRESS_DENY_SET} {
    type ipv4_addr; flags interval; auto-merge;
  }
  chain egress {
    ip daddr ${pool.cidr} counter reject with icmpx type admin-prohibited
    ip daddr 169.254.0.0/16 counter reject with icmpx type admin-prohibited
    ip daddr @${EGRESS_ALLOW_SET} accept
    ip daddr @${EGRESS_DENY_SET} counter reject with icmpx type admin-prohibited
    accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname ${tap} ct state established,related accept
    iifname ${tap} icmp type echo-request accept
    iifname ${tap} counter reject with icmpx type admin-prohibited
  }
}
`;
}

export const EGRESS_ALLOW_SET = 'allow_out';
export const EGRESS_DENY_SET = 'deny_out';

/**
 * Replaces a slot's per-sandbox egress sets in one transaction. `allow` and `deny` are normalised IPv4 CIDRs.
 * Allowed blocks win over denied ones, but neither can open what the chain rejects before consulting them.
 */
export function egressPolicyRuleset(allow: readonly string[], deny: readonly string[]): string {
  const fill = (set: string, cidrs: readonly string[]) =>
    `flush set inet ${SLOT_NFT_TABLE} ${set}\n` +
    (cidrs.length > 0 ? `add element inet ${SLOT_NFT_TABLE} ${set} { ${cidrs.join(', ')} }\n` : '');
  return fill(EGRESS_ALLOW_SET, allow) + fill(EGRESS_DENY_SET, deny);
}
