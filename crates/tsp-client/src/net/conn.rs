//! One TSP connection over TCP or UDP/RUDP: send a message, collect the reply the protocol
//! step expects. The protocol itself lives in `proto::client`; this is only transport.
//!
//! See docs/tsp-wire.md §1.4, §2.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout, timeout_at};

use super::NetError;
use tsp_proto::client::{Expect, Transport, take_reply};
use tsp_proto::rudp::{RttParams, RudpClient};
use tsp_proto::types::MAX_MESSAGE;

/// A connected TSP transport.
#[derive(Debug)]
pub enum Conn {
    Udp(UdpConn),
    Tcp(TcpConn),
}

impl Conn {
    pub fn transport(&self) -> Transport {
        match self {
            Self::Udp(_) => Transport::Udp,
            Self::Tcp(_) => Transport::Tcp,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Udp(c) => c.socket.local_addr(),
            Self::Tcp(c) => c.stream.local_addr(),
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        match self {
            Self::Udp(c) => c.peer,
            Self::Tcp(c) => c.peer,
        }
    }

    /// Sends `msg` (or, with `None`, only asks for the next message) and returns the reply.
    pub async fn exchange(&mut self, msg: Option<&[u8]>, expect: Expect) -> Result<Vec<u8>, NetError> {
        match self {
            Self::Udp(c) => c.exchange(msg.unwrap_or_default(), expect).await,
            Self::Tcp(c) => c.exchange(msg, expect).await,
        }
    }
}

/// A connected UDP socket with the RUDP engine: one outstanding message at a time.
#[derive(Debug)]
pub struct UdpConn {
    socket: UdpSocket,
    peer: SocketAddr,
    rudp: RudpClient,
    buf: Vec<u8>,
}

impl UdpConn {
    pub async fn connect(peer: SocketAddr, params: RttParams) -> Result<Self, NetError> {
        let bind: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0".parse()
        } else {
            "[::]:0".parse()
        }
        .map_err(|_| NetError::Io {
            what: "bind",
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        let socket = UdpSocket::bind(bind).await.map_err(NetError::io("bind UDP socket"))?;
        socket.connect(peer).await.map_err(NetError::io("connect UDP socket"))?;
        Ok(Self {
            socket,
            peer,
            rudp: RudpClient::new(Instant::now().into_std(), params),
            buf: vec![0; MAX_MESSAGE + 64],
        })
    }

    /// The socket, for the v6udpv4 datapath that reuses it after the negotiation.
    pub fn into_socket(self) -> UdpSocket {
        self.socket
    }

    async fn exchange(&mut self, msg: &[u8], _expect: Expect) -> Result<Vec<u8>, NetError> {
        let dgram = self.rudp.send(msg, Instant::now().into_std());
        self.send(&dgram).await?;
        loop {
            let deadline = self.rudp.deadline().map(Instant::from_std).unwrap_or_else(Instant::now);
            match timeout_at(deadline, self.socket.recv(&mut self.buf)).await {
                Ok(Ok(n)) => {
                    if let Some(payload) = self.rudp.on_datagram(&self.buf[..n], Instant::now().into_std()) {
                        return Ok(payload.to_vec());
                    }
                }
                // An ICMP port unreachable surfaces as ECONNREFUSED on a connected socket:
                // nothing listens there, which is what the retransmissions would conclude.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(NetError::Refused {
                        transport: Transport::Udp,
                        peer: self.peer,
                    });
                }
                Ok(Err(e)) => {
                    return Err(NetError::Io {
                        what: "receive UDP",
                        source: e,
                    });
                }
                Err(_) => {
                    if let Some(again) = self.rudp.on_timeout(Instant::now().into_std())? {
                        self.send(&again).await?;
                    }
                }
            }
        }
    }

    async fn send(&self, dgram: &[u8]) -> Result<(), NetError> {
        match self.socket.send(dgram).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(NetError::Refused {
                transport: Transport::Udp,
                peer: self.peer,
            }),
            Err(e) => Err(NetError::Io {
                what: "send UDP",
                source: e,
            }),
        }
    }
}

/// A TCP connection with a receive buffer that survives coalesced and split segments.
#[derive(Debug)]
pub struct TcpConn {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    reply_timeout: Duration,
}

impl TcpConn {
    pub async fn connect(
        peer: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Self, NetError> {
        let stream = match timeout(connect_timeout, TcpStream::connect(peer)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(NetError::Refused {
                    transport: Transport::Tcp,
                    peer,
                });
            }
            Ok(Err(e)) => {
                return Err(NetError::Io {
                    what: "connect TCP",
                    source: e,
                });
            }
            Err(_) => {
                return Err(NetError::Timeout {
                    what: "TCP connect",
                    after: connect_timeout,
                });
            }
        };
        // Small lock-step messages: do not let Nagle hold them back.
        stream.set_nodelay(true).map_err(NetError::io("set TCP_NODELAY"))?;
        Ok(Self {
            stream,
            peer,
            buf: Vec::new(),
            reply_timeout,
        })
    }

    /// The stream, kept open (and idle) for the tunnel's lifetime as gogoc does.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    async fn exchange(&mut self, msg: Option<&[u8]>, expect: Expect) -> Result<Vec<u8>, NetError> {
        if let Some(msg) = msg.filter(|m| !m.is_empty()) {
            self.stream.write_all(msg).await.map_err(NetError::io("send TCP"))?;
        }
        let deadline = Instant::now() + self.reply_timeout;
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(n) = take_reply(&self.buf, expect)? {
                return Ok(self.buf.drain(..n).collect());
            }
            let n = match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    return Err(NetError::Io {
                        what: "receive TCP",
                        source: e,
                    });
                }
                Err(_) if self.buf.is_empty() => {
                    return Err(NetError::Timeout {
                        what: "broker reply",
                        after: self.reply_timeout,
                    });
                }
                Err(_) => {
                    return Err(NetError::Incomplete {
                        preview: tsp_proto::frame::preview(&self.buf),
                    });
                }
            };
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    NetError::Closed
                } else {
                    NetError::Incomplete {
                        preview: tsp_proto::frame::preview(&self.buf),
                    }
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
