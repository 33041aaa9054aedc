"""Next-hop resolution for peers declared without `mac` (issue 14).

A peer's requests leave the data plane through its port with the next hop's MAC as
destination (`HbEgress.rewrite_request(dst_mac, ...)`). For a peer without a declared MAC
the controller finds it in the host's neighbour table, the way the host's own stack would:

1. the interface: the switch's `ports:` map (data-plane port -> host interface); a port
   without one stays unresolved, saying so;
2. the next hop: a route lookup for the peer's address restricted to that interface
   (`RTM_GETROUTE` with `oif`): the gateway, or the address itself when on-link (with no
   route through the interface the kernel also answers on-link);
3. the MAC: the neighbour entry of the next hop on that interface. When there is none (or it
   is INCOMPLETE/FAILED) the kernel is asked to resolve it: `RTM_NEWNEIGH` with `NTF_USE`,
   which runs the kernel's own ARP state machine (probes, retries, FAILED) on that
   interface; the lookup is retried with backoff.

The resolver re-reads every watched peer on netlink neighbour events of its next hop
(RTMGRP_NEIGH), every `refresh_s`, and retries unresolved ones with backoff. A resolved
peer keeps its last MAC while its entry is missing or failing (the heartbeats tell whether
the peer still answers); a STALE entry is asked to be confirmed (`NTF_USE`: the kernel
probes it), since the data plane's requests bypass the host stack and never confirm it.
Changes are reported in batches to `on_change`.

Thread-safety: one lock around the netlink socket; `watch`, `forget` and `get` may be called
from any thread. The sockets are opened in the resolver's thread and the caller's, both in
the controller's network namespace.
"""

from __future__ import annotations

import heapq
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# linux/neighbour.h
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY = 0x01, 0x02, 0x04, 0x08
NUD_PROBE, NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x10, 0x20, 0x40, 0x80
NTF_USE = 0x01
_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT
_STATE_NAMES = {NUD_INCOMPLETE: "INCOMPLETE", NUD_REACHABLE: "REACHABLE", NUD_STALE: "STALE",
                NUD_DELAY: "DELAY", NUD_PROBE: "PROBE", NUD_FAILED: "FAILED",
                NUD_NOARP: "NOARP", NUD_PERMANENT: "PERMANENT"}
RTMGRP_NEIGH = 0x4
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NDA_DST = 1
RETRY_S = (0.2, 10.0)  # first and longest wait between attempts for an unresolved next hop
REFRESH_S = 30.0


def state_name(state: int) -> str:
    return _STATE_NAMES.get(state, f"0x{state:x}") if state else "NONE"


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a peer's requests go: `mac` None while unresolved, `reason` says why."""

    address: str | None  # the next hop: the gateway, or the peer itself when on-link
    mac: str | None
    state: str  # the neighbour entry's NUD state, or NO_INTERFACE / NO_ROUTE / NONE
    interface: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "mac": self.mac, "state": self.state,
                "interface": self.interface, "reason": self.reason or None}


class NeighbourTable:
    """The host's routes and neighbours over rtnetlink (pyroute2)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ipr: Any = None

    def _route(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute  # imported here: only peers without MAC need it

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        with self._lock:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

    def ifindex(self, interface: str) -> int | None:
        try:
            return socket.if_nametoindex(interface)
        except OSError:
            return None

    def lookup(self, address: str, interface: str | None) -> tuple[NextHop, int | None]:
        """The next hop of `address` through `interface` and its neighbour entry now;
        with the interface index (None when the interface is unknown)."""
        if interface is None:
            return NextHop(None, None, "NO_INTERFACE",
                           reason="the peer's port has no interface (switch `ports:`)"), None
        index = self.ifindex(interface)
        if index is None:
            return NextHop(None, None, "NO_INTERFACE", interface,
                           reason=f"no interface {interface!r} on this host"), None
        with self._lock:
            ipr = self._route()
            try:
                routes = ipr.route("get", dst=address, oif=index)
            except Exception as exc:  # NetlinkError: unreachable, prohibited, ...
                return NextHop(None, None, "NO_ROUTE", interface,
                               reason=f"no route to {address} via {interface}: {exc}"), index
            gateway = routes[0].get_attr("RTA_GATEWAY") if routes else None
            hop = gateway or address
            found = [n for n in ipr.neigh("dump", ifindex=index)
                     if n.get_attr("NDA_DST") == hop]
        if not found:
            return NextHop(hop, None, "NONE", interface, reason=f"no ARP entry for {hop}"), \
                index
        state = int(found[0]["state"])
        mac = found[0].get_attr("NDA_LLADDR")
        if state & _USABLE and mac:
            return NextHop(hop, str(mac).lower(), state_name(state), interface), index
        return NextHop(hop, None, state_name(state), interface,
                       reason=f"{hop} does not answer ARP on {interface}"), index

    def solicit(self, address: str, index: int) -> None:
        """Have the kernel resolve (or re-confirm) `address` on interface `index`: NTF_USE
        runs neigh_event_send, the same as the host's own traffic would (ARP probes with
        the kernel's retries); a new entry starts INCOMPLETE."""
        with self._lock:
            try:
                self._route().neigh("replace", dst=address, ifindex=index,
                                    state=NUD_INCOMPLETE, flags=NTF_USE)
            except Exception as exc:
                log.debug("soliciting %s on ifindex %d failed: %s", address, index, exc)


@dataclass(slots=True)
class _Watch:
    address: str
    interface: str | None
    hop: NextHop
    index: int | None = None
    due: float = 0.0
    backoff: float = RETRY_S[0]


class Resolver:
    """Keeps the next hop of every watched key (a peer name) current; see the module doc."""

    def __init__(self, on_change: Callable[[dict[str, NextHop]], None], *,
                 table: NeighbourTable | None = None, refresh_s: float = REFRESH_S) -> None:
        self.on_change = on_change
        self.table = table or NeighbourTable()
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._queue: list[tuple[float, str]] = []  # (due, key); stale items are skipped
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- API --------------------------------------------------------------------------------

    def watch(self, key: str, address: str, interface: str | None) -> NextHop:
        """Resolve `key` from now on; returns what the table says now (no waiting)."""
        hop, index = self.table.lookup(address, interface)
        now = time.monotonic()
        with self._lock:
            w = _Watch(address, interface, hop, index)
            self._watches[key] = w
            self._schedule(key, w, now, hop, fresh=True)
        self._wake.set()
        return hop

    def forget(self, key: str) -> None:
        with self._lock:
            self._watches.pop(key, None)

    def get(self, key: str) -> NextHop | None:
        with self._lock:
            w = self._watches.get(key)
            return w.hop if w is not None else None

    def start(self) -> Resolver:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hbmon-neighbours",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.table.close()

    # -- internals --------------------------------------------------------------------------

    def _schedule(self, key: str, w: _Watch, now: float, hop: NextHop, *,
                  fresh: bool = False) -> None:
        """Next look at `w` (under the lock): soon with backoff while unresolved, at the
        refresh interval once resolved; a STALE entry is asked to be confirmed first."""
        if hop.mac is None or hop.state in ("STALE", "NONE", "FAILED", "INCOMPLETE"):
            w.due = now + (0.0 if fresh else w.backoff)
            if not fresh:
                w.backoff = min(w.backoff * 2, RETRY_S[1])
        else:
            w.backoff = RETRY_S[0]
            w.due = now + self.refresh_s
        heapq.heappush(self._queue, (w.due, key))

    def _run(self) -> None:
        events = self._subscribe()
        try:
            while not self._stop.is_set():
                with self._lock:
                    wait = (self._queue[0][0] - time.monotonic()) if self._queue else 1.0
                wait = max(0.0, min(wait, 0.5))  # bounded: stop is noticed within 0.5 s
                touched = self._read_events(events, wait) if events is not None else set()
                if events is None and wait:
                    self._wake.wait(wait)
                self._wake.clear()
                self._step(touched)
        finally:
            if events is not None:
                events.close()

    def _subscribe(self) -> socket.socket | None:
        """A netlink socket on the neighbour multicast group (None: periodic checks only)."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, RTMGRP_NEIGH))
            sock.setblocking(False)
            return sock
        except OSError as exc:
            log.warning("no neighbour events (%s): next hops are re-read periodically", exc)
            return None

    def _read_events(self, sock: socket.socket, wait: float) -> set[tuple[int, str]]:
        """(ifindex, address) of the neighbour entries that changed, waiting up to `wait`."""
        touched: set[tuple[int, str]] = set()
        ready, _, _ = select.select([sock], [], [], wait)
        while ready:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:  # ENOBUFS: events were lost; re-read everything
                log.debug("neighbour events: %s", exc)
                touched.add((-1, ""))
                break
            touched.update(parse_neigh_events(data))
        return touched

    def _step(self, touched: set[tuple[int, str]]) -> None:
        now = time.monotonic()
        due: set[str] = set()
        with self._lock:
            if touched:
                everything = (-1, "") in touched
                for key, w in self._watches.items():
                    if everything or (w.index, w.hop.address or "") in touched:
                        due.add(key)
            while self._queue and self._queue[0][0] <= now:
                _, key = heapq.heappop(self._queue)
                queued = self._watches.get(key)
                if queued is not None and queued.due <= now:
                    due.add(key)
            todo = [(k, self._watches[k]) for k in due if k in self._watches]
        changes: dict[str, NextHop] = {}
        for key, w in todo:
            hop, index = self.table.lookup(w.address, w.interface)
            if hop.mac is None and w.hop.mac is not None:
                # keep the last MAC: a missing or failing entry does not stop the requests
                # (the health engine tells whether the peer still answers)
                hop = NextHop(hop.address, w.hop.mac, hop.state, hop.interface, hop.reason)
            if index is not None and hop.address is not None and \
                    hop.state in ("NONE", "FAILED", "STALE"):
                self.table.solicit(hop.address, index)
            with self._lock:
                if self._watches.get(key) is not w:
                    continue  # forgotten or re-watched meanwhile
                if hop != w.hop:
                    changes[key] = hop
                w.hop, w.index = hop, index
                self._schedule(key, w, time.monotonic(), hop)
        if changes:
            try:
                self.on_change(changes)
            except Exception:
                log.exception("applying %d next-hop changes failed", len(changes))


def parse_neigh_events(data: bytes) -> Iterable[tuple[int, str]]:
    """(ifindex, IPv4 address) of each RTM_NEWNEIGH/RTM_DELNEIGH message in `data`."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH) and length >= 28:
            family, ifindex = struct.unpack_from("=B3xi", data, offset + 16)
            attr = offset + 28
            while family == socket.AF_INET and attr + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, attr)
                if alen < 4:
                    break
                if atype == NDA_DST and alen == 8:
                    yield ifindex, socket.inet_ntoa(data[attr + 4:attr + 8])
                attr += (alen + 3) & ~3
        offset += (length + 3) & ~3
