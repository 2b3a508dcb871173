//! The tail-call wiring: the payload programs loaded and put into the program arrays the
//! counting programs tail-call (see `rst-ebpf/src/payload.rs`).

use aya::{maps::ProgramArray, programs::Xdp, Ebpf};
use rst_common::wire::{
    CountingPrograms, DIRECTION_RX, DIRECTION_TX, MAP_PAYLOAD_TC_PROGRAMS, MAP_PAYLOAD_XDP_PROGRAMS,
};

use super::{
    object::{classifier, load_error},
    Error,
};

/// Loads the programs that count an RST with a payload (see `rst-ebpf/src/payload.rs`) and puts
/// them where the counting programs tail-call them. The program arrays stay in `ebpf`: the
/// kernel empties a program array when userspace closes its last descriptor of it.
pub(super) fn install_payload_programs(ebpf: &mut Ebpf, programs: CountingPrograms) -> Result<(), Error> {
    let CountingPrograms { xdp, tc, tc_egress } = programs;
    let xdp_program: &mut Xdp =
        ebpf.program_mut(xdp).ok_or_else(|| Error::MissingProgram(xdp.to_owned()))?.try_into()?;
    xdp_program.load().map_err(|error| load_error(Box::new(error)))?;
    let xdp_fd = xdp_program.fd()?.try_clone()?;
    let mut tc_fds = Vec::with_capacity(2);
    for (direction, name) in [(DIRECTION_RX, tc), (DIRECTION_TX, tc_egress)] {
        let program = classifier(ebpf, name)?;
        program.load().map_err(|error| load_error(Box::new(error)))?;
        tc_fds.push((direction, program.fd()?.try_clone()?));
    }
    let mut slots = ProgramArray::try_from(program_array(ebpf, MAP_PAYLOAD_XDP_PROGRAMS)?)?;
    slots.set(0, &xdp_fd, 0).map_err(|source| Error::TailCall {
        program: xdp.to_owned(),
        array: MAP_PAYLOAD_XDP_PROGRAMS,
        source,
    })?;
    let mut slots = ProgramArray::try_from(program_array(ebpf, MAP_PAYLOAD_TC_PROGRAMS)?)?;
    for (direction, fd) in &tc_fds {
        slots.set(u32::from(*direction), fd, 0).map_err(|source| Error::TailCall {
            program: "the TC payload programs".to_owned(),
            array: MAP_PAYLOAD_TC_PROGRAMS,
            source,
        })?;
    }
    Ok(())
}

fn program_array<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map, Error> {
    ebpf.map_mut(name).ok_or_else(|| Error::MissingMap(name.to_owned()))
}
