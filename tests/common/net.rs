//! Loopback addresses and ports, unique within a test process so that tests can run in
//! parallel: every seeder and every mount gets its own 127.0.0.x (trackers record the
//! announce's source IP, so one IP per peer keeps tracker lists unambiguous) and its own
//! port.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// 127.0.0.1 is left to trackers, control ports and the tests themselves.
static NEXT_HOST: AtomicU32 = AtomicU32::new(2);

/// The next unused loopback address: 127.0.0.2, 127.0.0.3, … then 127.0.1.x and so on.
pub fn next_ip() -> Ipv4Addr {
    let n = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
    // 253 usable hosts per /24 (1..=254 minus .1, which stays 127.0.0.1's).
    let (net, host) = (n / 253, n % 253 + 2);
    Ipv4Addr::new(
        127,
        0,
        u8::try_from(net % 256).unwrap_or(0),
        u8::try_from(host).unwrap_or(2),
    )
}

/// Ports come from 10000–29999: below Linux's ephemeral range (32768+), so an outgoing
/// connection cannot take a port between our check and the client's bind. Each process
/// starts at its own offset so that a leftover from an earlier run is unlikely to collide.
const PORT_LOW: u32 = 10_000;
const PORT_SPAN: u32 = 20_000;
static NEXT_PORT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A port that is free on `ip` (TCP and UDP) and whose successor is free on 127.0.0.1
/// (TCP): seed.sh puts transmission's RPC and qBittorrent's WebUI on PORT+1 there.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    let _ = NEXT_PORT.compare_exchange(
        u32::MAX,
        (std::process::id() % 1000) * 20,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..1000 {
        // Step 2: PORT and PORT+1 belong to one client.
        let slot = NEXT_PORT.fetch_add(2, Ordering::Relaxed) % PORT_SPAN;
        let port = u16::try_from(PORT_LOW + slot).unwrap_or(20_000);
        let ok = TcpListener::bind((ip, port)).is_ok()
            && UdpSocket::bind((ip, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if ok {
            return port;
        }
    }
    panic!("no free port pair found on {ip} in 1000 tries");
}

/// `IP:PORT` for a fresh address and port, e.g. for `swarmfs mount --listen`.
pub fn fresh_addr() -> String {
    let ip = next_ip();
    format!("{ip}:{}", free_port(ip))
}

/// True if something listens on TCP `ip:port` (from /proc/net/tcp, without connecting:
/// a probe connection would count as a failed peer to a BitTorrent client).
pub fn is_listening(ip: Ipv4Addr, port: u16) -> bool {
    // local_address is the IPv4 address as a little-endian hex u32, then ":PORT" in hex;
    // state 0A is LISTEN.
    let want = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = fields.next();
            let state = fields.nth(1);
            local == Some(want.as_str()) && state == Some("0A")
        })
}
