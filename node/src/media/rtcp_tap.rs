//! Lets the RTCP the SFU acts on through webrtc-rs's interceptor chain.
//!
//! webrtc-rs ends every chain with a terminus that drops inbound RTCP: interceptors consume it,
//! and only packets an interceptor marks with `DeliverToApplication` reach the application.
//! The node forwards and answers feedback itself — keyframe requests and NACKs from
//! subscribers, their congestion feedback (TWCC, REMB), publishers' sender reports — so this
//! interceptor, last before the terminus, marks compound packets carrying any of those.

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp;
use rtc::rtcp::header::PacketType;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::time::Instant;

/// Slot of the tap: application-most, after every interceptor of webrtc-rs.
pub const RTCP_TAP_SLOT: usize = 20_000;

/// See the module documentation.
#[derive(Default)]
pub struct RtcpTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

/// Whether the SFU acts on this RTCP packet.
fn wanted(p: &dyn rtcp::Packet) -> bool {
    matches!(
        p.header().packet_type,
        PacketType::SenderReport
            | PacketType::TransportSpecificFeedback
            | PacketType::PayloadSpecificFeedback
    )
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| wanted(p.as_ref()))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for RtcpTap {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{AttributedPacket, Registry, Slot};
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::shared::TransportContext;

    fn rtcp(p: Box<dyn rtcp::Packet>) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![p])),
        }
    }

    #[test]
    fn feedback_reaches_the_application_and_plain_reports_do_not() {
        let mut chain = Registry::new()
            .with(Slot::from(RTCP_TAP_SLOT), RtcpTap::default())
            .build();
        chain
            .handle_read(rtcp(Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc: 2,
            })))
            .unwrap();
        assert!(chain.poll_read().is_some(), "a PLI gets through");
        chain
            .handle_read(rtcp(Box::new(ReceiverReport::default())))
            .unwrap();
        assert!(
            chain.poll_read().is_none(),
            "a receiver report alone does not"
        );
    }
}
