// How the host agent talks to the guest agent inside a VM (envd's HTTP surface): readiness, /init, warm-up.
export { guestAgentHealthy, waitForGuestAgent, type GuestAgentHealthOptions } from './guest-health';
export { initGuestAgent } from './guest-init';
export { warmGuestAgent, type GuestWarmUpOptions } from './guest-warm-up';
export { syncGuestFilesystems } from './guest-sync';
