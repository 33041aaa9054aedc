/*
 * hbmon data plane: parser, checksum controls, deparser.
 *
 * A heartbeat header is extracted only where one is expected: UDP to the response port on a
 * front-panel port (responses), or UDP to the request port in a PacketOut (request
 * templates). A BFD control packet is UDP to port 3784 either way: from a front-panel port
 * (the remote's control packets) or in a PacketOut (the BFD fan-out template, docs/bfd.md).
 * Ordinary traffic is parsed no further than UDP.
 *
 * v1model does not drop on a parser error: ingress runs with standard_metadata.parser_error
 * set. A response shorter than 28 bytes after UDP fails the heartbeat extract with
 * error.PacketTooShort, leaves hdr.hb invalid, and ingress counts it TRUNCATED; a BFD packet
 * shorter than 24 bytes after UDP likewise leaves hdr.bfd invalid: BFD_TRUNCATED.
 */
#ifndef HB_PARSER_P4
#define HB_PARSER_P4

#include "headers.p4"

parser HbParser(packet_in packet,
                out headers_t hdr,
                inout metadata_t meta,
                inout standard_metadata_t std_meta) {

    state start {
        transition select(std_meta.ingress_port) {
            CPU_PORT: parse_packet_out;
            default: parse_ethernet;
        }
    }

    state parse_packet_out {
        packet.extract(hdr.packet_out);
        meta.from_cpu = 1;
        transition parse_ethernet;
    }

    state parse_ethernet {
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            default: accept;
        }
    }

    /* Only unfragmented IPv4 without options carries a heartbeat (protocol.md: IHL = 5);
     * anything else is ordinary traffic. flags & 1 is MF. */
    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        transition select(hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.flags,
                          hdr.ipv4.frag_offset, hdr.ipv4.protocol) {
            (4, 5, 3w0 &&& 3w1, 0, IP_PROTO_UDP): parse_udp;
            default: accept;
        }
    }

    state parse_udp {
        packet.extract(hdr.udp);
        transition select(meta.from_cpu, hdr.udp.dst_port) {
            (0, HB_RESPONSE_PORT): parse_heartbeat;
            (1, HB_REQUEST_PORT): parse_heartbeat;
            (_, BFD_PORT): parse_bfd;
            default: accept;
        }
    }

    state parse_heartbeat {
        packet.extract(hdr.hb);
        transition accept;
    }

    state parse_bfd {
        packet.extract(hdr.bfd);
        transition accept;
    }
}

/* Monitors do not verify checksums (protocol.md): a response is judged by its content. */
control HbVerifyChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

/* Only rewritten requests and BFD control packets get a new IPv4 checksum (their destination
 * changed); forwarded traffic leaves untouched. */
control HbComputeChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply {
        update_checksum(
            (meta.fanout == 1 || meta.bfd_fanout == 1) && hdr.ipv4.isValid(),
            { hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.dscp, hdr.ipv4.ecn,
              hdr.ipv4.total_len, hdr.ipv4.identification, hdr.ipv4.flags,
              hdr.ipv4.frag_offset, hdr.ipv4.ttl, hdr.ipv4.protocol,
              hdr.ipv4.src_addr, hdr.ipv4.dst_addr },
            hdr.ipv4.hdr_checksum,
            HashAlgorithm.csum16);
    }
}

control HbDeparser(packet_out packet, in headers_t hdr) {
    apply {
        packet.emit(hdr.packet_in);
        packet.emit(hdr.ethernet);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.udp);
        packet.emit(hdr.hb);
        packet.emit(hdr.bfd);
    }
}

#endif  /* HB_PARSER_P4 */
