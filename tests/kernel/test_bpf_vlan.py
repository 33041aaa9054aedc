"""Issue 11: 802.1Q/802.1ad-tagged frames are ordinary traffic on the kernel target, as on
bmv2 (whose parser has no VLAN state), whatever the offloads would do with the tag.

Real veths and namespaces: the peer side puts the tag in skb metadata, out of the frame, the
way a VLAN device or a bridge does (tests/kernel/vlan_push.bpf.c on its egress: this kernel
has no 8021q module), or writes it into the frame with a raw socket. Either way the heartbeat
must not be recorded (no reason counted, the slot unchanged, a DOWN peer stays DOWN) and must
reach the host stack, still tagged; the same frame untagged is recorded.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hbmon.protocol import REGISTERS, PlaneState, Reason
from hbmon_kernel import libbpf as lb
from hbmon_kernel.datapath import Datapath, DatapathError

from .bpf_lab import ETH_P_ALL, Lab, in_netns, ip, ip_int, response_frame

MONITOR_IP = ip_int("198.18.0.1")
PEER_IP = ip_int("198.18.1.1")
PEER_ID = 1001
INDEX = 3
VID = 100
PROTOS = {"802.1Q": 0x8100, "802.1ad": 0x88A8}
MARKS = {"802.1Q": 0x48425131, "802.1ad": 0x48425141}  # as in vlan_push.bpf.c
_SOL_PACKET, _PACKET_AUXDATA, _TP_STATUS_VLAN_VALID = 263, 8, 0x10
RX_OFFLOADS = ("rx-vlan-offload", "rx-vlan-stag-hw-parse")  # the port's
TX_OFFLOADS = ("tx-vlan-offload", "tx-vlan-stag-hw-insert")  # the far end of a veth port's


def offloads(iface: str, ns: str | None = None) -> dict[str, str]:
    cmd = ["ethtool", "-k", iface] if ns is None else ["ip", "netns", "exec", ns, "ethtool",
                                                         "-k", iface]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    names = RX_OFFLOADS if ns is None else TX_OFFLOADS
    return {name: m.group(1) for name in names
            if (m := re.search(rf"^{name}: (on|off)", out, re.MULTILINE))}


def set_offloads(lab: Lab, value: str) -> None:
    subprocess.run(["ethtool", "-K", lab.ifaces[0], "rxvlan", value, "rx-vlan-stag-hw-parse",
                    value], capture_output=True, check=True)
    subprocess.run(["ip", "netns", "exec", lab.ns(1), "ethtool", "-K", "eth0", "txvlan", value,
                    "tx-vlan-stag-hw-insert", value], capture_output=True, check=True)


def all_offloads(lab: Lab) -> set[str]:
    return {*offloads(lab.ifaces[0]).values(), *offloads("eth0", lab.ns(1)).values()}


@pytest.fixture()
def lab() -> Iterator[Lab]:
    with Lab(1) as lab_:
        # the offloads on (the veth default, and a NIC driver's): the case that hid the tag
        set_offloads(lab_, "on")
        assert len(offloads(lab_.ifaces[0])) == len(offloads("eth0", lab_.ns(1))) == 2
        assert all_offloads(lab_) == {"on"}
        yield lab_


def raw_socket(lab: Lab, mark: int = 0) -> socket.socket:
    """A raw socket writing frames out of eth0 in the port's namespace; `mark` (SO_MARK)
    asks vlan_push.bpf.c to tag them in skb metadata."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        s.bind(("eth0", 0))
        return s

    return in_netns(lab.ns(1), make)


@pytest.fixture(scope="module")
def vlan_push_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/kernel/vlan_push.bpf.c, built as kernel/bpf/Makefile builds the pipeline."""
    out = tmp_path_factory.mktemp("bpf") / "vlan_push.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
                    f"-I/usr/include/{os.uname().machine}-linux-gnu", "-c",
                    str(Path(__file__).with_name("vlan_push.bpf.c")), "-o", str(out)],
                   check=True, capture_output=True)
    return out


@contextlib.contextmanager
def metadata_tagger(lab: Lab, obj_path: Path) -> Iterator[None]:
    """vlan_push on the tc egress of eth0 in the port's namespace, while in the block."""
    obj = lb.BpfObject(obj_path)
    obj.load()
    hook = in_netns(lab.ns(1), lambda: lb.TcHook(socket.if_nametoindex("eth0")))
    try:
        in_netns(lab.ns(1), hook.create)
        in_netns(lab.ns(1), lambda: hook.attach(obj.program_fd("vlan_push"), lb.BPF_TC_EGRESS))
        yield
    finally:
        in_netns(lab.ns(1), hook.destroy)
        obj.close()


def host_capture(ifname: str) -> socket.socket:
    """What reaches the host stack on `ifname` (taps run after XDP and tc ingress)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(_SOL_PACKET, _PACKET_AUXDATA, 1)
    s.bind((ifname, 0))
    s.settimeout(0.2)
    return s


def wait_for_vlan(sock: socket.socket, payload: bytes, timeout_s: float = 5.0) -> int | None:
    """The VLAN id of the inbound frame carrying `payload` (-1: untagged), None if none came.
    The stack moves a tag into metadata before its taps: auxdata carries it then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data, ancillary, _, addr = sock.recvmsg(65535, socket.CMSG_SPACE(20))
        except TimeoutError:
            continue
        if addr[2] == socket.PACKET_OUTGOING or payload not in data:
            continue
        for level, kind, cdata in ancillary:
            if level == _SOL_PACKET and kind == _PACKET_AUXDATA:
                status, *_, tci, _tpid = struct.unpack("=IIIHHHH", cdata[:20])
                if status & _TP_STATUS_VLAN_VALID:
                    return tci & 0x0FFF
        if data[12:14] in (b"\x81\x00", b"\x88\xa8"):
            return int.from_bytes(data[14:16], "big") & 0x0FFF
        return -1
    return None


def slot(dp: Datapath) -> dict[str, int]:
    return {name: dp.register_read(name, INDEX) for name in REGISTERS}


def wait_recorded(dp: Datapath, count: int) -> None:
    deadline = time.monotonic() + 5
    while dp.counter_read("hb_reason", Reason.RESPONSE_RECORDED)[0] < count:
        assert time.monotonic() < deadline, "the untagged response was not recorded"
        time.sleep(0.001)  # polling the counter with a deadline


@pytest.mark.parametrize("proto", sorted(PROTOS))
@pytest.mark.parametrize("tag_in", ["skb-metadata", "frame"])
def test_tagged_heartbeat_is_ordinary_traffic(lab: Lab, vlan_push_object: Path, proto: str,
                                              tag_in: str) -> None:
    """skb-metadata: the peer side tags the frame the way a VLAN device or bridge does, in
    metadata a veth hands over with the skb (the case that revived a muted DOWN peer);
    frame: a raw 802.1Q/802.1ad frame. Neither is a heartbeat."""
    with (contextlib.closing(host_capture(lab.ifaces[0])) as capture,
          metadata_tagger(lab, vlan_push_object),
          Datapath(lab.ports, max_peers=16) as dp,
          contextlib.closing(raw_socket(lab)) as untagged_out,
          contextlib.closing(raw_socket(lab, MARKS[proto])) as tagged_out):
        dp.peers_set(PEER_IP, PEER_ID, INDEX)
        dp.peer_ids_set(PEER_ID)
        # requests 1 and 2 went out (as egress records it): answers to them are not FUTURE
        dp.register_write("hb_tx_count", INDEX, 2)
        dp.register_write("hb_last_tx_seq", INDEX, 2)

        def response(seq: int) -> bytes:
            return response_frame(peer_ip=PEER_IP, monitor_ip=MONITOR_IP, peer_id=PEER_ID,
                                  seq=seq, tx_us=dp.now_us(), src_mac=lab.peer_mac(1),
                                  dst_mac=lab.root_mac(1))

        # a peer that answered once, then went quiet: the fan-out declared it DOWN
        untagged_out.send(response(1))
        wait_recorded(dp, 1)
        dp.register_write("hb_state", INDEX, PlaneState.DOWN)
        dp.register_write("hb_miss_count", INDEX, 3)
        before, counts = slot(dp), dp.reason_counts()

        fresh = response(2)
        if tag_in == "skb-metadata":
            tagged_out.send(fresh)
        else:
            untagged_out.send(fresh[:12] + PROTOS[proto].to_bytes(2, "big")
                              + VID.to_bytes(2, "big") + fresh[12:])
        # it reached the host stack, tagged: XDP has judged it by then
        assert wait_for_vlan(capture, fresh[14:]) == VID, "tagged frame not passed on"
        assert dp.reason_counts() == counts, "a tagged frame was counted as a heartbeat"
        assert slot(dp) == before
        assert dp.register_read("hb_state", INDEX) == PlaneState.DOWN

        untagged_out.send(fresh)  # the same heartbeat, untagged: recorded
        wait_recorded(dp, 2)
        assert dp.register_read("hb_state", INDEX) == PlaneState.UP
        assert dp.register_read("hb_last_seq", INDEX) == 2


def test_vlan_offloads_off_while_attached_and_restored(lab: Lab) -> None:
    """The port's rx VLAN offloads (a NIC's) and its veth far end's tx VLAN offloads (which
    put a tag in skb metadata the veth hands over as it is) are off while the target runs."""
    with Datapath(lab.ports, max_peers=16):
        assert all_offloads(lab) == {"off"}
    assert all_offloads(lab) == {"on"}
    # only what the target changed is restored: an offload that was off stays off
    set_offloads(lab, "off")
    with Datapath(lab.ports, max_peers=16):
        pass
    assert all_offloads(lab) == {"off"}


def test_start_refused_without_ethtool(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """No way to keep tags in the frame: the target refuses to start (and leaves the port
    as it found it) rather than record tagged heartbeats."""
    monkeypatch.setattr(Datapath, "_ETHTOOL", "/nonexistent/ethtool")
    dp = Datapath(lab.ports, max_peers=16)
    with pytest.raises(DatapathError, match="ethtool"):
        dp.start()
    assert lb.xdp_prog_id(socket.if_nametoindex(lab.ifaces[0])) == 0
    assert all_offloads(lab) == {"on"}



def test_far_end_in_an_unnamed_namespace_is_found() -> None:
    """Mininet hosts and containers hold their namespace by a process, not a name: the far
    end of the port is found through /proc and its tx VLAN offloads are off while attached."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    port_if = f"hbv{os.getpid() % 100000}{secrets.token_hex(1)}"
    netns = f"/proc/{holder.pid}/ns/net"
    try:
        deadline = time.monotonic() + 5  # unshare has run once sleep has replaced it
        while os.stat(netns).st_ino == os.stat("/proc/self/ns/net").st_ino:
            assert time.monotonic() < deadline, "unshare --net did not take"
            time.sleep(0.01)
        ip("link", "add", port_if, "type", "veth", "peer", "name", "far0", "netns",
           str(holder.pid))
        ip("link", "set", port_if, "up")

        def far() -> set[str]:
            out = subprocess.run(["nsenter", f"--net={netns}", "ethtool", "-k", "far0"],
                                 capture_output=True, text=True, check=True).stdout
            return {m.group(1) for name in TX_OFFLOADS
                    if (m := re.search(rf"^{name}: (on|off)", out, re.MULTILINE))}

        assert far() == {"on"}
        with Datapath({1: port_if}, max_peers=16):
            assert far() == {"off"}
            assert set(offloads(port_if).values()) == {"off"}
        assert far() == {"on"}
    finally:
        with contextlib.suppress(RuntimeError):
            ip("link", "del", port_if)
        holder.kill()
        holder.wait()
