"""Advertises one (unsigned) voicelink peer with python-zeroconf, an mDNS stack that
paces its answers as RFC 6762 asks (Bonjour and Avahi do the same), until stdin
closes; then leaves as docs/PROTOCOL.md §1 says: an announcement with `bye=1`, then
the mDNS goodbye.

Usage: zeroconf_peer.py DEVICE_ID INSTANCE ADDRESS PORT
"""

import socket
import sys

from zeroconf import ServiceInfo, Zeroconf


def main() -> None:
    device_id, instance, address, port = sys.argv[1:5]

    def advert(leaving: bool) -> ServiceInfo:
        properties = {"v": "1", "id": device_id, "name": "zeroconf", "port": port}
        if leaving:
            properties["bye"] = "1"
        return ServiceInfo(
            "_voicelink._udp.local.",
            f"{instance}._voicelink._udp.local.",
            addresses=[socket.inet_aton(address)],
            port=int(port),
            properties=properties,
            server=f"voicelink-{instance.lower()}.local.",
        )

    zc = Zeroconf(interfaces=[address])
    zc.register_service(advert(False))
    print("registered", flush=True)
    sys.stdin.read()
    zc.update_service(advert(True))
    zc.unregister_service(advert(True))
    zc.close()


if __name__ == "__main__":
    main()
