/*
 * hbmon: heartbeat offload data plane for bmv2 (v1model).
 *
 * The contract this program implements (names, ids, widths, reason codes, semantics) is
 * docs/dataplane.md; the wire format is docs/protocol.md. The P4Info p4c derives from this
 * source, p4src/build/heartbeat.p4info.txtpb, is shared with the Linux kernel target.
 *
 *   constants.p4  protocol and contract numbers
 *   headers.p4    headers, controller headers, digest struct, metadata
 *   registers.p4  the per-peer health-check registers and the hb_reason counter
 *   parser.p4     parser, checksum controls, deparser
 *   ingress.p4    responses, PacketOut handling, digests, L2 forwarding
 *   egress.p4     request fan-out rewrite, tx/miss accounting, DOWN detection
 */
#include <core.p4>
#define V1MODEL_VERSION 20200408
#include <v1model.p4>

#include "constants.p4"
#include "headers.p4"
#include "registers.p4"
#include "parser.p4"
#include "ingress.p4"
#include "egress.p4"

V1Switch(
    HbParser(),
    HbVerifyChecksum(),
    HbIngress(),
    HbEgress(),
    HbComputeChecksum(),
    HbDeparser()
) main;
