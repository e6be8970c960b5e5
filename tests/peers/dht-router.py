#!/usr/bin/python3
"""Usage: dht-router.py IP:PORT

A DHT-only python-libtorrent 2.0 node (no torrent) that other nodes bootstrap from: the
hub of a private DHT on loopback (see dht-test.py in the lab for why a hub, not a mesh).
It has no bootstrap nodes of its own; DHT IP restrictions are off, since every node of
the test shares 127.0.0.0/8. Logs DHT traffic (incoming get_peers and announces) and its
routing-table size every 2 s on stdout; runs until SIGTERM/SIGINT.
"""
import signal
import sys
import time
import warnings

import libtorrent as lt

warnings.simplefilter("ignore", DeprecationWarning)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def main():
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        sys.exit(__doc__)
    listen = sys.argv[1]
    ip = listen.rsplit(":", 1)[0]
    ses = lt.session({
        "listen_interfaces": listen,
        "outgoing_interfaces": ip,
        "enable_dht": True,
        "dht_bootstrap_nodes": "",
        "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_incoming_utp": False, "enable_outgoing_utp": False,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_enforce_node_id": False,
        "dht_prefer_verified_node_ids": False,
        "dht_ignore_dark_internet": False,
        "alert_mask": lt.alert.category_t.dht_notification | lt.alert.category_t.error_notification
                      | lt.alert.category_t.status_notification,
    })
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    log(f"dht router listen={listen}")
    last = 0
    while not stop["now"]:
        for a in ses.pop_alerts():
            log("alert:", type(a).__name__, a.message()[:200])
        if time.time() - last >= 2:
            last = time.time()
            log("dht_nodes", ses.status().dht_nodes)
        time.sleep(0.1)
    ses.pause()
    log("exit")


if __name__ == "__main__":
    main()
