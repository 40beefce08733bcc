//! The address, route and link monitor (`ip monitor address route link`) (docs/tsp-wire.md §8).

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;

use super::{ConnectionTask, NetlinkError, local_addr};

/// A change seen by [`address_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAddrEvent {
    AddressAdded { idx: u32, addr: IpAddr, plen: u8 },
    AddressRemoved { idx: u32, addr: IpAddr, plen: u8 },
    RouteChanged,
    LinkChanged { idx: u32 },
}

type Unsolicited = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// The stream returned by [`address_events`]. It ends if the monitor socket fails (e.g. the
/// kernel dropped events on overflow); re-subscribe and re-check then. Dropping it closes the
/// socket.
pub struct AddressEvents {
    // Held for its Drop, which stops the connection.
    _task: ConnectionTask,
    rx: Unsolicited,
}

impl fmt::Debug for AddressEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressEvents").finish_non_exhaustive()
    }
}

fn to_event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkAddrEvent> {
    let NetlinkPayload::InnerMessage(inner) = msg.payload else {
        return None;
    };
    match inner {
        RouteNetlinkMessage::NewAddress(m) => local_addr(&m).map(|addr| LinkAddrEvent::AddressAdded {
            idx: m.header.index,
            addr,
            plen: m.header.prefix_len,
        }),
        RouteNetlinkMessage::DelAddress(m) => local_addr(&m).map(|addr| LinkAddrEvent::AddressRemoved {
            idx: m.header.index,
            addr,
            plen: m.header.prefix_len,
        }),
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => Some(LinkAddrEvent::RouteChanged),
        RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m) => {
            Some(LinkAddrEvent::LinkChanged { idx: m.header.index })
        }
        _ => None,
    }
}

impl Stream for AddressEvents {
    type Item = LinkAddrEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LinkAddrEvent>> {
        loop {
            match self.rx.poll_next_unpin(cx) {
                Poll::Ready(Some((msg, _))) => {
                    if let Some(ev) = to_event(msg) {
                        return Poll::Ready(Some(ev));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Subscribe to address, route and link changes (`ip monitor address route link`). The client
/// treats any event as a cue to re-check [`Netlink::route_get`](super::Netlink::route_get)
/// towards the broker.
pub fn address_events() -> Result<AddressEvents, NetlinkError> {
    let rt = ConnectionTask::runtime()?;
    let (conn, _handle, rx) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .map_err(NetlinkError::Socket)?;
    let task = ConnectionTask::spawn(&rt, conn);
    Ok(AddressEvents { _task: task, rx })
}
