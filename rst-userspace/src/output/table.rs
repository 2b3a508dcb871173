//! The table for people: one block per interval, the run's summary with its diagnosis at the end.

use std::io::{self, Write};

use crate::{
    model::aggregate::{
        diagnosis,
        model::{
            endpoint, per_second, service_endpoint, CaptureSummary, Conversation, Destination, Flow, Interval, Origin,
            PayloadSummary, Run, Service, Source, Totals, WorkloadResets,
        },
        rank::ROW_DETAIL,
    },
    output::view::View,
};

use super::clock;

pub struct TablePrinter<W: Write> {
    out: W,
    top: usize,
    by: View,
}

impl<W: Write> TablePrinter<W> {
    pub fn new(out: W, top: usize, by: View) -> Self {
        Self { out, top, by }
    }

    pub fn interval(&mut self, record: &Interval) -> io::Result<()> {
        let t = &record.totals;
        write!(
            self.out,
            "── {}  {:.2}s  RSTs {} ({:.1}/s)  flows {}  frames {}  tcp {}",
            clock(record.ended),
            record.elapsed.as_secs_f64(),
            t.resets,
            record.rate(),
            record.flows_seen,
            t.frames,
            t.tcp
        )?;
        if t.malformed > 0 || t.fragments > 0 {
            write!(self.out, "  malformed {}  fragments {}", t.malformed, t.fragments)?;
        }
        writeln!(self.out)?;
        self.overflow_warning(t)?;
        if t.resets == 0 {
            writeln!(self.out, "   no resets")?;
        } else {
            self.ranking(&record.sources, &record.destinations, &record.services, &record.workloads)?;
            match self.folded(&record.conversations) {
                Some(conversations) => self.conversations_table(conversations, "TOP CONVERSATIONS")?,
                None => self.flows_table(&record.flows, "TOP FLOWS")?,
            }
        }
        self.out.flush()
    }

    pub fn summary(&mut self, run: &Run) -> io::Result<()> {
        let t = &run.totals;
        let mut ifaces: Vec<String> =
            run.interfaces.iter().map(|i| format!("{} ({})", i.iface, i.mode.name())).collect();
        if ifaces.is_empty() {
            ifaces.push("no interface".into());
        }
        writeln!(self.out)?;
        writeln!(
            self.out,
            "══ SUMMARY  {:.1}s on {}  RSTs {} ({:.1}/s)  flows {}  frames {}  tcp {}  malformed {}  fragments {}",
            run.elapsed.as_secs_f64(),
            ifaces.join(", "),
            t.resets,
            per_second(t.resets, run.elapsed),
            run.flows.len(),
            t.frames,
            t.tcp,
            t.malformed,
            t.fragments
        )?;
        self.overflow_warning(t)?;
        if let Some(capture) = &run.capture {
            self.capture_line(capture)?;
        }
        if let Some(payloads) = &run.rst_payloads {
            self.payload_loss_line(payloads)?;
        }
        if t.resets == 0 {
            writeln!(self.out, "   no resets seen")?;
        } else {
            // The causes lead: what a tired on-call person reads first.
            for verdict in &run.verdicts {
                writeln!(self.out, "   ▶ {}", verdict.text())?;
            }
            for line in diagnosis::sentences(run) {
                writeln!(self.out, "   » {line}")?;
            }
            let sources = &run.sources[..run.sources.len().min(self.top)];
            self.ranking(sources, &run.destinations, &run.services, &run.workloads)?;
            let (listed, unit) = match self.folded(&run.conversations) {
                Some(list) => {
                    self.conversations_table(&list[..list.len().min(self.top)], "TOP CONVERSATIONS (whole run)")?;
                    (list.len(), "conversations")
                }
                None => {
                    self.flows_table(&run.flows[..run.flows.len().min(self.top)], "TOP FLOWS (whole run)")?;
                    (run.flows.len(), "flows")
                }
            };
            if run.unlisted.resets > 0 {
                writeln!(
                    self.out,
                    "   {} RSTs belong to flows beyond --summary-flows: counted for their sources, not listed",
                    run.unlisted.resets
                )?;
            }
            if listed > self.top {
                writeln!(self.out, "   … {} more {unit} (--format json lists every flow)", listed - self.top)?;
            }
        }
        self.out.flush()
    }

    /// The table `--by` asks for (flows are always listed after it).
    fn ranking(
        &mut self,
        sources: &[Source],
        destinations: &[Destination],
        services: &[Service],
        workloads: &[WorkloadResets],
    ) -> io::Result<()> {
        match self.by {
            View::Src => self.sources_table(sources),
            View::Dst => self.destinations_table(destinations),
            View::Service => self.services_table(services),
            View::Flow => Ok(()),
            View::Workload => self.workloads_table(workloads),
        }
    }

    fn workloads_table(&mut self, workloads: &[WorkloadResets]) -> io::Result<()> {
        if workloads.is_empty() {
            return writeln!(self.out, "   no resets of local workloads (or workloads are off)");
        }
        let names: Vec<String> = workloads.iter().map(|w| w.workload.describe()).collect();
        let width = names.iter().map(String::len).max().unwrap_or(0).max(16);
        writeln!(self.out, "   {:<width$} {:>9} {:>9}  CGROUP · PROCESSES", "WORKLOAD", "SENT", "RECEIVED")?;
        for (name, resets) in names.iter().zip(workloads).take(self.top) {
            let mut processes: Vec<String> =
                resets.workload.processes.iter().take(ROW_DETAIL).map(|p| format!("{} {}", p.comm, p.pid)).collect();
            if resets.workload.processes.len() > ROW_DETAIL {
                processes.push("…".into());
            }
            let detail = if processes.is_empty() { String::new() } else { format!(" · {}", processes.join(", ")) };
            writeln!(
                self.out,
                "   {:<width$} {:>9} {:>9}  {}{detail}",
                name, resets.sent, resets.received, resets.workload.cgroup
            )?;
        }
        Ok(())
    }

    /// `--capture`: where the resets went, and what the capture could not keep.
    fn capture_line(&mut self, capture: &CaptureSummary) -> io::Result<()> {
        let CaptureSummary { file, files, written, dropped, over_budget, ring_full, not_written, error } = capture;
        let place = match files.len() {
            0 | 1 => file.clone(),
            n => format!("{file} ({n} files)"),
        };
        write!(self.out, "   capture {place}: {written} RSTs written, {dropped} dropped")?;
        if *dropped > 0 {
            write!(
                self.out,
                " (budget {over_budget}, ring full {ring_full}, after the capture stopped {not_written})"
            )?;
        }
        writeln!(self.out)?;
        if let Some(error) = error {
            writeln!(self.out, "   WARNING: the capture stopped early: {error}")?;
        }
        Ok(())
    }

    /// RSTs with data whose payload the kernel could not hand over: said only when there are
    /// some (the flows show every payload that arrived).
    fn payload_loss_line(&mut self, payloads: &PayloadSummary) -> io::Result<()> {
        let PayloadSummary { handed_over, ring_full, unreadable } = *payloads;
        if ring_full + unreadable > 0 {
            writeln!(
                self.out,
                "   WARNING: {} RST payloads not read (ring full {ring_full}, unreadable {unreadable}; {handed_over} read)",
                ring_full + unreadable
            )?;
        }
        Ok(())
    }

    fn overflow_warning(&mut self, totals: &Totals) -> io::Result<()> {
        if totals.overflow > 0 {
            writeln!(
                self.out,
                "   WARNING: flow table full: {} RSTs are in the totals and their sources but in no flow (raise --max-flows)",
                totals.overflow
            )?;
        }
        if totals.source_overflow > 0 {
            writeln!(
                self.out,
                "   WARNING: source table full too: {} RSTs are in the totals only",
                totals.source_overflow
            )?;
        }
        Ok(())
    }

    fn sources_table(&mut self, sources: &[Source]) -> io::Result<()> {
        let width = sources.iter().map(|s| s.src.to_string().len()).max().unwrap_or(0).max(15);
        writeln!(
            self.out,
            "   {:<width$} {:>9} {:>9} {:>6}  {:<17} MAIN DESTINATIONS",
            "RESETTER", "RSTS", "RSTS/s", "SHARE", "FROM PORT"
        )?;
        for source in sources {
            let mut ports: Vec<String> = source.ports.iter().map(|(port, _)| port.to_string()).collect();
            if source.flows as usize > ROW_DETAIL && ports.len() == ROW_DETAIL {
                ports.push("…".into());
            }
            writeln!(
                self.out,
                "   {:<width$} {:>9} {:>9.1} {:>5.0}%  {:<17} {}",
                source.src.to_string(),
                source.resets,
                source.rate,
                source.share,
                ports.join(","),
                with_resets(&source.destinations)
            )?;
        }
        Ok(())
    }

    fn destinations_table(&mut self, destinations: &[Destination]) -> io::Result<()> {
        let width = destinations.iter().map(|d| d.dst.to_string().len()).max().unwrap_or(0).max(15);
        writeln!(self.out, "   {:<width$} {:>9} {:>6} {:>7}  MAIN SENDERS", "RESET TARGET", "RSTS", "SHARE", "FLOWS")?;
        for destination in destinations.iter().take(self.top) {
            writeln!(
                self.out,
                "   {:<width$} {:>9} {:>5.0}% {:>7}  {}",
                destination.dst.to_string(),
                destination.resets,
                destination.share,
                destination.flows,
                with_resets(&destination.senders)
            )?;
        }
        Ok(())
    }

    fn services_table(&mut self, services: &[Service]) -> io::Result<()> {
        let width = services
            .iter()
            .map(|s| service_endpoint(s.addr, s.port, s.tunnel.as_ref()).len())
            .max()
            .unwrap_or(0)
            .max(21);
        writeln!(
            self.out,
            "   {:<width$} {:>9} {:>8} {:>9} {:>8} {:>8}  RESETS BY KIND",
            "SERVICE", "ATTEMPTS", "SYN+ACK", "RSTS", "REFUSED", "REFUSED%"
        )?;
        for service in services.iter().take(self.top) {
            let kinds: Vec<String> =
                service.kinds.present().map(|(kind, count)| format!("{} {count}", kind.name())).collect();
            writeln!(
                self.out,
                "   {:<width$} {:>9} {:>8} {:>9} {:>8} {:>7.0}%  {}",
                service_endpoint(service.addr, service.port, service.tunnel.as_ref()),
                service.attempts,
                service.synacks,
                service.resets,
                service.refused,
                service.refused_share,
                kinds.join(", ")
            )?;
        }
        Ok(())
    }

    /// The conversations to list instead of the flows: `--by flow` always asks for the flows.
    fn folded<'a>(&self, conversations: &'a Option<Vec<Conversation>>) -> Option<&'a [Conversation]> {
        conversations.as_deref().filter(|_| self.by != View::Flow)
    }

    fn conversations_table(&mut self, conversations: &[Conversation], title: &str) -> io::Result<()> {
        let rows: Vec<(String, String, &Conversation)> =
            conversations.iter().map(|c| (c.sender.to_string(), c.receiver.to_string(), c)).collect();
        let [iface_width, sender_width, receiver_width] =
            column_widths(conversations.iter().map(|c| c.iface.as_str()), &rows);
        writeln!(self.out, "   {title} (flows folded by client host; --by flow lists each)")?;
        for (sender, receiver, conversation) in &rows {
            let kinds: Vec<&str> = conversation.kinds.present().map(|(kind, _)| kind.name()).collect();
            let connections = match conversation.connections {
                1 => "1 connection".to_owned(),
                n => format!("{n} connections"),
            };
            let mut notes =
                format!("{} {} by the {}", conversation.direction.name(), kinds.join("+"), conversation.side.name());
            if conversation.first == conversation.connections {
                notes.push_str(", first");
            } else if conversation.first > 0 {
                notes.push_str(&format!(", first in {}", conversation.first));
            }
            writeln!(
                self.out,
                "   {:<iface_width$}  {:>sender_width$} → {:<receiver_width$} {:>9}  {connections:<16} {notes}",
                conversation.iface, sender, receiver, conversation.resets
            )?;
        }
        Ok(())
    }

    fn flows_table(&mut self, flows: &[Flow], title: &str) -> io::Result<()> {
        let rows: Vec<(String, String, &Flow)> =
            flows.iter().map(|f| (endpoint(f.src, f.sport), endpoint(f.dst, f.dport), f)).collect();
        let [iface_width, src_width, dst_width] = column_widths(flows.iter().map(|f| f.iface.as_str()), &rows);
        writeln!(self.out, "   {title}")?;
        for (src, dst, flow) in &rows {
            let kinds: Vec<&str> = flow.kinds.present().map(|(kind, _)| kind.name()).collect();
            let mut notes = format!("{} {} by the {}", flow.direction.name(), kinds.join("+"), flow.side.name());
            if flow.first {
                notes.push_str(", first");
            }
            if let Some(tunnel) = &flow.tunnel {
                notes.push_str(&format!(", in {}", tunnel.describe()));
            }
            if let Some(middlebox) = &flow.middlebox {
                notes.push_str(&format!(", MIDDLEBOX? TTL {} vs {}", middlebox.rst_ttl, middlebox.peer_ttl));
            }
            if !flow.reasons.is_empty() {
                let reasons: Vec<String> = flow.reasons.keys().map(ToString::to_string).collect();
                notes.push_str(&format!(", kernel: {}", reasons.join("+")));
            }
            if flow.no_kernel_event.unwrap_or(0) > 0 {
                notes.push_str(", not from the TCP stack");
            }
            if let Some(workload) = &flow.workload {
                notes.push_str(&format!(", {}", workload.describe()));
            }
            if flow.origin == Some(Origin::Kernel) {
                notes.push_str(", the kernel for no socket");
            }
            if let Some(payload) = &flow.rst_payload {
                notes.push_str(&format!(", payload \"{payload}\""));
            }
            writeln!(
                self.out,
                "   {:<iface_width$}  {:>src_width$} → {:<dst_width$} {:>9}  {notes}",
                flow.iface, src, dst, flow.resets
            )?;
        }
        Ok(())
    }
}

/// A ranked row's detail list: "10.0.0.1 (5), 10.0.0.2 (3)".
fn with_resets(addresses: &[(std::net::IpAddr, u64)]) -> String {
    let listed: Vec<String> = addresses.iter().map(|(addr, resets)| format!("{addr} ({resets})")).collect();
    listed.join(", ")
}

/// The widths of a two-endpoint table's columns: its interfaces (at least the header's five)
/// and the rows' two endpoints.
fn column_widths<'a, T>(ifaces: impl Iterator<Item = &'a str>, rows: &[(String, String, T)]) -> [usize; 3] {
    let widest = |lengths: &mut dyn Iterator<Item = usize>| lengths.max().unwrap_or(0);
    [
        widest(&mut ifaces.map(str::len)).max(5),
        widest(&mut rows.iter().map(|r| r.0.len())),
        widest(&mut rows.iter().map(|r| r.1.len())),
    ]
}
