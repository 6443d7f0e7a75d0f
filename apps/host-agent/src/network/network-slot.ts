/** One prepared network slot: everything a VMM needs to attach a guest and everything the host needs to reach it. */
export interface NetworkSlot {
  index: number;
  /** Network namespace the VMM process must run in (`ip netns exec <netnsName>` or setns on netnsPath). */
  netnsName: string;
  netnsPath: string;
  /** Tap device inside the namespace the VMM attaches to; always `tap0`. */
  tapName: string;
  tapMac: string;
  /** Host end of the slot's veth pair (root namespace). */
  hostVeth: string;
  /** Address the host (proxy, health checks) connects to; every port is DNATed to the guest. */
  hostAddress: string;
  /** Guest configuration, identical in every slot. */
  guestIp: string;
  guestMac: string;
  gatewayIp: string;
  prefixLength: number;
}
