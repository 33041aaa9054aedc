/*
 * hbmon data plane: the health-check structure.
 *
 * One slot per peer: every register below is an array of HB_MAX_PEERS cells indexed by the
 * peer index that `HbIngress.peers` (responses) or the replica's egress_rid (requests) gives.
 * They are declared at the top level so that ingress (responses) and egress (requests) update
 * the same arrays. Their names and @id values are the P4Runtime contract (docs/dataplane.md):
 * do not rename or renumber.
 *
 * Time unit: every *_us register holds MICROSECONDS OF THE TARGET CLOCK (bmv2:
 * standard_metadata.{ingress,egress}_global_timestamp, microseconds since the switch started).
 * Only differences of target times mean something to a controller.
 *
 * A controller resets a slot before reusing an index by writing 0 to every register at that
 * index. A slot whose hb_rx_count is 0 has recorded no response yet: its first response is
 * fresh whatever its sequence (once it passed the TTL, nonce and FUTURE_SEQUENCE checks),
 * and it sets hb_rtt_min_us and hb_rtt_ewma_us outright.
 */
#ifndef HB_REGISTERS_P4
#define HB_REGISTERS_P4

#include "constants.p4"

/* Fresh responses recorded (packets). Wraps at 2^32. */
@id(0x16000001) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_rx_count;

/* Requests transmitted to the peer, one per rewritten fan-out replica (packets). */
@id(0x16000002) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_tx_count;

/* Responses not recorded because they were DUPLICATE or OLD_SEQUENCE (packets). */
@id(0x16000003) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_dup_count;

/* Requests sent since the last fresh response (requests): +1 per request (saturating at
 * 2^32-1), 0 on a fresh response. Compared with detect_mult before the increment. */
@id(0x16000004) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_miss_count;

/* Sequence number of the last fresh response (no unit; RFC 1982 serial arithmetic). */
@id(0x16000005) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_last_seq;

/* Target time the last fresh response arrived (us, ingress timestamp). */
@id(0x16000006) register<bit<64>, peer_index_t>(HB_MAX_PEERS) hb_last_rx_us;

/* Target time the last request to the peer was transmitted (us, egress timestamp); equal to
 * the tx_timestamp_us written into that request. */
@id(0x16000007) register<bit<64>, peer_index_t>(HB_MAX_PEERS) hb_last_tx_us;

/* RTT of the last fresh response (us): arrival time - echoed tx_timestamp_us. An echoed time
 * later than the arrival gives 0; an RTT above 2^32-1 us saturates at 2^32-1. */
@id(0x16000008) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_rtt_last_us;

/* Smallest RTT recorded (us); 0 = no sample yet. */
@id(0x16000009) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_rtt_min_us;

/* Largest RTT recorded (us). */
@id(0x1600000a) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_rtt_max_us;

/* EWMA of the RTT (us), alpha = 1/8: ewma = (7 * ewma + rtt) >> 3, computed on 64 bits;
 * the first sample sets it. */
@id(0x1600000b) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_rtt_ewma_us;

/* Last status the peer reported: 0 HEALTHY, 1 DEGRADED, 2 DRAINING (as received). */
@id(0x1600000c) register<bit<8>, peer_index_t>(HB_MAX_PEERS) hb_peer_status;

/* Last load the peer reported (0-255; responders report percent, 255 = unknown). */
@id(0x1600000d) register<bit<8>, peer_index_t>(HB_MAX_PEERS) hb_peer_load;

/* Data-plane liveness: 0 UNKNOWN, 1 UP, 2 DOWN. UP on a fresh response, DOWN when a request
 * finds hb_miss_count >= detect_mult; each change raises a peer_event_t digest. */
@id(0x1600000e) register<bit<8>, peer_index_t>(HB_MAX_PEERS) hb_state;

/* Sequence of the last request transmitted to the peer (no unit), written by egress with
 * hb_tx_count and hb_last_tx_us. A response whose sequence is after it (or that arrives
 * while hb_tx_count is 0) answers nothing this target sent: FUTURE_SEQUENCE. Without this
 * bound one forged response far ahead (last + 2^30) made every real answer OLD_SEQUENCE. */
@id(0x1600000f) register<bit<32>, peer_index_t>(HB_MAX_PEERS) hb_last_tx_seq;

/* ---- BFD sessions (docs/bfd.md) ----
 * A BFD session owns a slot in the same index space as heartbeat peers. Its hb_rx_count,
 * hb_last_rx_us, hb_tx_count, hb_last_tx_us and hb_state keep their meaning (control packets
 * recorded / sent, UP on a recorded packet, DOWN on detection-time expiry); the registers
 * below hold what the remote's last recorded control packet said (RFC 5880 section 6.8.6),
 * written by ingress, and the Final we owe it, cleared by egress when it is sent. */

/* The remote's state (0 AdminDown, 1 Down, 2 Init, 3 Up) as last received. */
@id(0x16000010) register<bit<8>, peer_index_t>(HB_MAX_PEERS) bfd_remote_state;

/* The remote's diagnostic code (RFC 5880 section 4.1) as last received. */
@id(0x16000011) register<bit<8>, peer_index_t>(HB_MAX_PEERS) bfd_remote_diag;

/* The remote's detect mult as last received (its detection time = this x our TX interval). */
@id(0x16000012) register<bit<8>, peer_index_t>(HB_MAX_PEERS) bfd_remote_mult;

/* The remote's discriminator (its my_disc): egress writes it into our your_disc. Set by
 * every recorded packet; zeroed by egress when the detection time passes (RFC 5880
 * section 6.8.1), so our packets then carry your_disc 0. */
@id(0x16000013) register<bit<32>, peer_index_t>(HB_MAX_PEERS) bfd_remote_disc;

/* The remote's desired min TX interval (us) as last received. */
@id(0x16000014) register<bit<32>, peer_index_t>(HB_MAX_PEERS) bfd_remote_min_tx_us;

/* The remote's required min RX interval (us) as last received. */
@id(0x16000015) register<bit<32>, peer_index_t>(HB_MAX_PEERS) bfd_remote_min_rx_us;

/* 1: the remote sent a Poll (P) since our last control packet, so the next one carries F
 * (RFC 5880 section 6.5: answered by the data plane, not the controller); egress sends it
 * even if not due yet, then clears it. */
@id(0x16000016) register<bit<8>, peer_index_t>(HB_MAX_PEERS) bfd_final_due;

/* Packets and bytes per reason code (constants.p4, REASON_*), ingress and egress alike. */
@id(0x12000001) counter<reason_t>(HB_REASON_COUNT, CounterType.packets_and_bytes) hb_reason;

#endif  /* HB_REGISTERS_P4 */
