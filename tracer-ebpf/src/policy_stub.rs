//! A stand-in for another tool's datapath program (the VPC CNI network-policy agent attaches
//! classifiers named `handle_ingress` / `handle_egress` to every pod veth): drops UDP and TCP
//! packets to or from port 53, lets everything else through with `TC_ACT_OK` — ending tc
//! processing, as the agent does on allow. Used only by the transparency tests
//! (`tracer stub-policy`, devtools builds); never part of the tracer's own object.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};

const ETH_P_IP: u16 = 0x0800;

/// True for IPv4 UDP/TCP with port 53 on either side.
#[inline(always)]
fn is_dns(ctx: &TcContext) -> bool {
    let Ok(proto) = ctx.load::<[u8; 2]>(12) else {
        return false;
    };
    if u16::from_be_bytes(proto) != ETH_P_IP {
        return false;
    }
    let Ok(vihl) = ctx.load::<u8>(14) else {
        return false;
    };
    let Ok(l4) = ctx.load::<u8>(23) else {
        return false;
    };
    if l4 != 6 && l4 != 17 {
        return false;
    }
    let off = 14 + usize::from(vihl & 0x0f) * 4;
    let Ok(ports) = ctx.load::<[u8; 4]>(off) else {
        return false;
    };
    u16::from_be_bytes([ports[0], ports[1]]) == 53 || u16::from_be_bytes([ports[2], ports[3]]) == 53
}

/// Ingress of a pod veth (packets from the pod).
#[classifier]
fn handle_ingress(ctx: TcContext) -> i32 {
    if is_dns(&ctx) { TC_ACT_SHOT } else { TC_ACT_OK }
}

/// Egress of a pod veth (packets toward the pod).
#[classifier]
fn handle_egress(ctx: TcContext) -> i32 {
    if is_dns(&ctx) { TC_ACT_SHOT } else { TC_ACT_OK }
}

tracer_ebpf::program_runtime!();
