"""Datapath life cycle (clear refusals, complete clean-up) and the map access layer:
mmap-ed registers against the bpf() syscall view, per-CPU counter sums, table entries,
multicast group placement."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hbmon.protocol import BFD_REGISTERS, REASON_COUNT
from hbmon.protocol import REGISTERS as HB_REGISTERS
from hbmon_kernel import libbpf as lb
from hbmon_kernel.datapath import Datapath, DatapathError, TableFullError

from .bpf_lab import Lab, ip

REGISTERS = {**HB_REGISTERS, **BFD_REGISTERS}  # the heartbeat slot's and BFD's

MAX_PEERS = 256


@pytest.fixture(scope="module")
def dp() -> Iterator[Datapath]:
    with Datapath({}, max_peers=MAX_PEERS) as datapath:
        yield datapath


# ---------------------------------------------------------------- life cycle


def test_refuses_missing_interface() -> None:
    with pytest.raises(DatapathError, match=r"interface 'hbnosuch0' \(port 3\) does not exist"):
        Datapath({3: "hbnosuch0"}).start()


def test_refuses_missing_objects(tmp_path: Path) -> None:
    with pytest.raises(DatapathError, match=r"make -C kernel/bpf"):
        Datapath({}, bpf_dir=tmp_path).start()


def test_refuses_without_bpf_permission() -> None:
    """Root whose capabilities are gone (a locked-down container) gets a clear refusal.

    (A uid other than 0 is refused the same way, but may not be able to read the checkout.)
    """
    code = (
        "from hbmon_kernel.datapath import Datapath, DatapathError\n"
        "try:\n    Datapath({}).start()\n"
        "except DatapathError as e:\n    print('REFUSED', e)\n"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", code],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert out.stdout.startswith(
        "REFUSED BPF is not permitted for root without the needed capabilities"
    ), out.stdout + out.stderr


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="CPU port"):
        Datapath({255: "x"})
    with pytest.raises(ValueError, match="max_peers"):
        Datapath({}, max_peers=65537)
    with pytest.raises(ValueError, match="port"):
        Datapath({512: "x"})


def _clsact(iface: str) -> bool:
    out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", iface], capture_output=True,
                         text=True, check=True).stdout
    return any(q.get("kind") == "clsact" for q in json.loads(out or "[]"))


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True,
                          check=False).returncode == 0


def test_close_removes_everything() -> None:
    with Lab(2) as lab:
        dp = Datapath(lab.ports, max_peers=16)
        dp.start()
        try:
            for iface in lab.ifaces:
                idx = int(Path(f"/sys/class/net/{iface}/ifindex").read_text())
                assert lb.xdp_prog_id(idx) != 0
                assert _clsact(iface)
            # (a, b) packet-out and heartbeat round pacer, (c, d) bursts, (e, f) BFD rounds
            cpu_ports = dp.cpu_ifnames
            assert len(cpu_ports) == 6 and all(_link_exists(n) for n in cpu_ports)
        finally:
            dp.close()
        for iface in lab.ifaces:
            idx = int(Path(f"/sys/class/net/{iface}/ifindex").read_text())
            assert lb.xdp_prog_id(idx) == 0
            assert not _clsact(iface)
        assert not any(_link_exists(n) for n in cpu_ports)
        dp.close()  # idempotent
        with pytest.raises(DatapathError, match="not running"):
            dp.register_read_all("hb_state")
        with pytest.raises(DatapathError, match="closed"):
            dp.start()


def test_refuses_port_with_foreign_xdp_program_and_leaves_it() -> None:
    with Lab(1) as lab, Datapath(lab.ports, max_peers=16) as first:
        idx = first.port_ifindex(1)
        owner = lb.xdp_prog_id(idx)
        second = Datapath(lab.ports, max_peers=16)
        with pytest.raises(DatapathError, match="already has an XDP program"):
            second.start()
        assert lb.xdp_prog_id(idx) == owner, "the first data plane keeps its program"
        assert _clsact(lab.ifaces[0])
        assert not any(_link_exists(n) for n in second.cpu_ifnames), "failed start cleaned up"


def test_start_takes_over_from_a_killed_data_plane() -> None:
    """kill -9 leaves programs attached and the CPU veth behind; the next start cleans up."""
    with Lab(1) as lab:
        code = (
            "import sys\n"
            "from hbmon_kernel.datapath import Datapath\n"
            f"dp = Datapath({lab.ports!r}, max_peers=16)\n"
            "dp.start()\n"
            "print(dp.cpu_ifnames[0], flush=True)\n"
            "sys.stdin.read()\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            stale_veth = proc.stdout.readline().strip()
            assert stale_veth.startswith("hbc")
            idx = int(Path(f"/sys/class/net/{lab.ifaces[0]}/ifindex").read_text())
            stale_prog = lb.xdp_prog_id(idx)
            assert stale_prog != 0
            # alive: its programs are in use, a second data plane is refused
            with pytest.raises(DatapathError, match="already has an XDP program"):
                Datapath(lab.ports, max_peers=16).start()
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert _link_exists(stale_veth), "kill -9 ran no clean-up"
        assert lb.xdp_prog_id(idx) == stale_prog
        with Datapath(lab.ports, max_peers=16) as dp:
            assert lb.xdp_prog_id(idx) not in (0, stale_prog)
            assert not _link_exists(stale_veth)
            assert dp.prog_test_run("hb_xdp_rx", bytes(60)).retval == 2
        assert lb.xdp_prog_id(idx) == 0


def test_existing_clsact_is_kept() -> None:
    with Lab(1) as lab:
        ip_tc = ["tc", "qdisc", "add", "dev", lab.ifaces[0], "clsact"]
        subprocess.run(ip_tc, check=True)
        with Datapath(lab.ports, max_peers=16):
            pass
        assert _clsact(lab.ifaces[0]), "we did not make it, we do not remove it"
        ip("link", "set", lab.ifaces[0], "down")


# ---------------------------------------------------------------- registers


def test_register_widths_and_sizes(dp: Datapath) -> None:
    assert dp.REGISTERS == REGISTERS
    for name, width in REGISTERS.items():
        values = dp.register_read_all(name)
        assert len(values) == MAX_PEERS
        dp.register_write(name, MAX_PEERS - 1, (1 << width) - 1)
        assert dp.register_read(name, MAX_PEERS - 1) == (1 << width) - 1
        with pytest.raises(ValueError, match=f"{width} bits"):
            dp.register_write(name, 0, 1 << width)
        with pytest.raises(IndexError):
            dp.register_read(name, MAX_PEERS)
        dp.register_fill(name, 0)
    with pytest.raises(KeyError, match="no register"):
        dp.register_read_all("hb_nope")


def test_mmap_view_matches_syscall_view(dp: Datapath) -> None:
    """What the mmap shows is what the kernel's array holds, both ways."""
    rng = random.Random(4)
    fmt = {64: "=Q", 32: "=I", 8: "=B"}
    for name, width in REGISTERS.items():
        bmap = dp._map(name)
        values = [rng.randrange(1 << width) for _ in range(MAX_PEERS)]
        # written through bpf(BPF_MAP_UPDATE_ELEM), read through mmap
        bmap.update_batch([(struct.pack("=I", i), struct.pack(fmt[width], v))
                           for i, v in enumerate(values)])
        assert dp.register_read_all(name) == values
        # written through mmap, read through bpf(BPF_MAP_LOOKUP_ELEM)
        dp.register_write(name, 17, 5)
        raw = bmap.lookup(struct.pack("=I", 17))
        assert raw is not None and struct.unpack(fmt[width], raw)[0] == 5
        dp.register_fill(name, 3)
        got = {struct.unpack(fmt[width], v)[0] for _, v in bmap.lookup_batch()}
        assert got == {3}
        dp.register_fill(name, 0)


def test_counter_sums_over_cpus(dp: Datapath) -> None:
    bmap = dp._map("hb_reason")
    ncpus = lb.libbpf().ncpus
    per_cpu = b"".join(struct.pack("=QQ", c + 1, 100 * (c + 1)) for c in range(ncpus))
    bmap.update(struct.pack("=I", 9), per_cpu)
    total = (sum(range(1, ncpus + 1)), 100 * sum(range(1, ncpus + 1)))
    assert dp.counter_read("hb_reason", 9) == total
    assert dp.counter_read_all("hb_reason")[9] == total
    assert len(dp.counter_read_all("hb_reason")) == REASON_COUNT
    dp.counter_write("hb_reason", 9, 0, 0)
    assert dp.counter_read("hb_reason", 9) == (0, 0)
    with pytest.raises(KeyError):
        dp.counter_read_all("nope")


# ---------------------------------------------------------------- tables


def test_table_entries_round_trip(dp: Datapath) -> None:
    dp.peers_set(0xC6120101, 77, 5, 0xDEADBEEF, 255)
    assert dp.peers_get(0xC6120101, 77) == (5, 0xDEADBEEF, 255)
    assert (0xC6120101, 77, 5, 0xDEADBEEF, 255) in dp.peers_items()
    dp.peers_set(0xC6120101, 77, 6)  # modify: nonce key and GTSM back to 0 (off)
    assert dp.peers_get(0xC6120101, 77) == (6, 0, 0)
    assert dp.peers_delete(0xC6120101, 77) and dp.peers_get(0xC6120101, 77) is None
    dp.peer_ids_set(77)
    assert 77 in dp.peer_ids_items()
    assert dp.peer_ids_delete(77) and not dp.peer_ids_delete(77)
    dp.peer_requests_set(3, 0x0211223344FF, 0xC6120103, 99, 4, 0xFFFFFFFF)
    assert dp.peer_requests_get(3) == (0x0211223344FF, 0xC6120103, 99, 4, 0xFFFFFFFF)
    assert dp.peer_requests_delete(3) and dp.peer_requests_get(3) is None
    assert not dp.peer_requests_delete(3)
    dp.l2_set(0x0200000000AA, 4)
    dp.l2_set(0x0200000000BB, None)
    assert sorted(dp.l2_items()) == [(0x0200000000AA, 4), (0x0200000000BB, None)]
    assert dp.l2_delete(0x0200000000AA) and dp.l2_delete(0x0200000000BB)
    assert dp.l2_items() == []


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d: d.peers_set(1 << 32, 1, 0), "src_addr"),
        (lambda d: d.peers_set(1, 1, MAX_PEERS), "max_peers"),
        (lambda d: d.peers_set(1, -1, 0), "peer_id"),
        (lambda d: d.l2_set(1 << 48, 1), "dst_mac"),
        (lambda d: d.l2_set(1, 512), "port"),
        (lambda d: d.peer_requests_set(0, 1, 1, 1, 256), "detect_mult"),
        (lambda d: d.peer_requests_set(0, 1, 1, 1, 3, 1 << 32), "nonce_key"),
        (lambda d: d.peers_set(1, 1, 0, -1), "nonce_key"),
        (lambda d: d.peers_set(1, 1, 0, 0, 256), "min_ttl"),
        (lambda d: d.mcast_group_set(0, []), "group_id"),
        (lambda d: d.mcast_group_set(1, [(1, 2), (1, 2)]), "given twice"),
        (lambda d: d.mcast_group_set(1, [(512, 2)]), "port"),
        (lambda d: d.packet_out(b"short", 1, 0), "shorter"),
        (lambda d: d.packet_out(bytes(64), 1, 1 << 16), "mcast_grp"),
    ],
)
def test_bad_input_names_the_field(dp: Datapath, call: Callable[[Datapath], object],
                                   match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(dp)


def test_table_full() -> None:
    with Datapath({}, max_peers=4) as small:
        for i in range(4):
            small.peers_set(i + 1, 1, i)
        with pytest.raises(TableFullError, match="peers: table full"):
            small.peers_set(99, 1, 0)
        assert len(small.peers_items()) == 4


# ---------------------------------------------------------------- replica placement

PLACEMENTS = [
    ("add-to-empty", [], [(1, 0), (1, 1)]),
    ("append", [(1, 0), (1, 1)], [(1, 0), (1, 1), (2, 2)]),
    ("remove-middle", [(1, 0), (1, 1), (1, 2), (1, 3)], [(1, 0), (1, 2), (1, 3)]),
    ("remove-tail", [(1, 0), (1, 1), (1, 2)], [(1, 0), (1, 1)]),
    ("replace-one", [(1, 0), (1, 1), (1, 2)], [(1, 0), (1, 9), (1, 2)]),
    ("remove-many", [(1, i) for i in range(10)], [(1, 9), (1, 0)]),
    ("remove-all", [(1, 0), (1, 1)], []),
    ("reorder-only", [(1, 0), (1, 1)], [(1, 1), (1, 0)]),
]


@pytest.mark.parametrize(("name", "old", "wanted"), PLACEMENTS, ids=[p[0] for p in PLACEMENTS])
def test_replica_placement_is_stable(name: str, old: list[tuple[int, int]],
                                     wanted: list[tuple[int, int]]) -> None:
    new = Datapath._place(old, wanted, set(wanted))
    assert sorted(new) == sorted(wanted)
    # every kept replica whose old position still exists did not move, unless it filled
    # a hole from the tail; nothing moves when nothing was removed
    if set(old) <= set(wanted):
        assert new[:len(old)] == old
    moved = sum(1 for i, r in enumerate(new) if i < len(old) and old[i] != r)
    assert moved <= len(set(old) - set(wanted)) + len(set(wanted) - set(old))


def test_group_in_kernel_matches_placement(dp: Datapath) -> None:
    reps = dp._map("mcast_replicas")

    def kernel_group(g: int) -> list[tuple[int, int]]:
        count = struct.unpack("=I", dp._map("mcast_groups").lookup(struct.pack("=I", g)) or
                              b"\xff\xff\xff\xff")[0]
        entries = {struct.unpack("=II", k): struct.unpack("=II", v)
                   for k, v in reps.lookup_batch()}
        assert all(k[1] < count for k in entries if k[0] == g), "no stale positions"
        return [entries[(g, pos)] for pos in range(count)]

    dp.mcast_group_set(7, [(1, i) for i in range(300)])
    assert kernel_group(7) == [(1, i) for i in range(300)]
    dp.mcast_group_set(7, [(1, i) for i in range(300) if i % 7] + [(2, 1000)])
    assert sorted(kernel_group(7)) == sorted([(1, i) for i in range(300) if i % 7] + [(2, 1000)])
    assert kernel_group(7) == dp.mcast_group_get(7)
    dp.mcast_group_set(8, [(3, 3)])
    assert dp.mcast_groups().keys() == {7, 8}
    assert dp.mcast_group_delete(7) and not dp.mcast_group_delete(7)
    assert all(struct.unpack("=II", k)[0] == 8 for k, _ in reps.lookup_batch())
    assert dp.mcast_group_delete(8)
