/**
 * Addressing that is identical in every slot. A snapshot's guest wakes up with the same IP, gateway and ARP cache
 * it had when the template was frozen, so every clone of one snapshot must see exactly this network from inside.
 */
export const GUEST_IP = '169.254.0.21';
export const GATEWAY_IP = '169.254.0.22';
export const PREFIX = 30;
/** Locally administered, fixed: restored guests keep their ARP entry for the gateway. */
export const TAP_MAC = '02:fc:00:00:00:05';
/** Fixed so the slot can pin the guest's neighbour entry and clones of one snapshot stay identical. */
export const GUEST_MAC = '02:fc:00:00:00:06';
export const TAP_NAME = 'tap0';
/** Interface name of the veth peer inside each slot namespace. */
export const SLOT_UPLINK_NAME = 'eth0';
/** TCP port the in-guest agent (envd equivalent) listens on. */
export const GUEST_AGENT_PORT = 49983;
/** Name of the nftables table the agent owns, both on the host and inside each slot namespace. */
export const SLOT_NFT_TABLE = 'kiln';
