//! The kernel's tick rate (`CONFIG_HZ`), to turn the idle gaps the programs measure in jiffies
//! into milliseconds. Not `sysconf(_SC_CLK_TCK)`: that is USER_HZ, 100 whatever the kernel's.
//!
//! In order: the build config (`/boot/config-$(uname -r)`, then `/proc/config.gz` through
//! `gzip -dc`), and failing both, a measurement: `jiffies` and the monotonic clock from
//! `/proc/timer_list` (root only) twice, 200 ms apart, snapped to the rates Linux offers
//! (100, 250, 300, 1000) when within 5 %.

use std::{io::Read as _, process::Command, time::Duration};

/// The rates `CONFIG_HZ` can take.
const RATES: [u32; 4] = [100, 250, 300, 1000];

/// How the rate was found, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Measured,
}

/// This kernel's HZ and how it was found.
///
/// # Errors
/// Why none of the ways worked, in one line: idle gaps are then unavailable (a gap in the
/// wrong unit would mislead).
pub fn kernel_hz() -> Result<(u32, Source), String> {
    if let Some(hz) = configured_hz() {
        return Ok((hz, Source::Config));
    }
    measured_hz().map(|hz| (hz, Source::Measured))
}

fn configured_hz() -> Option<u32> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let boot = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok();
    let config = boot.or_else(|| {
        let output = Command::new("gzip").args(["-dc", "/proc/config.gz"]).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    })?;
    parse_config(&config)
}

/// `CONFIG_HZ=<n>` of a kernel config.
pub fn parse_config(config: &str) -> Option<u32> {
    config.lines().find_map(|line| line.strip_prefix("CONFIG_HZ=")).and_then(|hz| hz.trim().parse().ok())
}

fn measured_hz() -> Result<u32, String> {
    let first = timer_list()?;
    std::thread::sleep(Duration::from_millis(200));
    let second = timer_list()?;
    let (ns, jiffies) = (second.0.saturating_sub(first.0), second.1.wrapping_sub(first.1));
    snap(jiffies as f64 * 1e9 / ns.max(1) as f64)
        .ok_or_else(|| format!("the kernel's HZ is not in its config and measured {jiffies} jiffies in {ns} ns"))
}

/// The rate Linux offers within 5 % of `measured`.
pub fn snap(measured: f64) -> Option<u32> {
    RATES.into_iter().find(|&rate| (measured - f64::from(rate)).abs() <= f64::from(rate) * 0.05)
}

/// (`now at <ns> nsecs`, `jiffies: <n>`) of `/proc/timer_list`.
fn timer_list() -> Result<(u64, u64), String> {
    let mut text = String::new();
    std::fs::File::open("/proc/timer_list")
        .and_then(|mut file| file.read_to_string(&mut text))
        .map_err(|error| format!("no kernel config to read HZ from, and /proc/timer_list: {error}"))?;
    parse_timer_list(&text)
        .ok_or_else(|| "no kernel config to read HZ from, and /proc/timer_list has no jiffies".into())
}

pub fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let now = text.lines().find_map(|l| l.strip_prefix("now at "))?.split_whitespace().next()?.parse().ok()?;
    let jiffies = text.lines().find_map(|l| l.trim().strip_prefix("jiffies: "))?.trim().parse().ok()?;
    Some((now, jiffies))
}

/// `jiffies` in milliseconds at `hz`.
pub fn to_ms(jiffies: u32, hz: u32) -> u64 {
    u64::from(jiffies) * 1000 / u64::from(hz.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_timer_list_and_snapping() {
        assert_eq!(parse_config("# CONFIG_HZ_1000 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"), Some(250));
        assert_eq!(parse_config("CONFIG_HZ_250=y\n"), None);
        let text = "Timer List Version: v0.10\nnow at 9615324101872 nsecs\n  .idle_jiffies   : 4297273554\njiffies: 4297296112\n";
        assert_eq!(parse_timer_list(text), Some((9_615_324_101_872, 4_297_296_112)));
        assert_eq!(snap(249.0), Some(250));
        assert_eq!(snap(990.0), Some(1000));
        assert_eq!(snap(180.0), None);
        assert_eq!(to_ms(375, 250), 1500);
    }

    #[test]
    fn this_kernels_rate_is_found() -> anyhow::Result<()> {
        let (hz, source) = match kernel_hz() {
            Ok(found) => found,
            Err(why) => {
                rst_lab::skip::skip("this_kernels_rate_is_found", &why.to_string())?;
                return Ok(());
            }
        };
        assert!(RATES.contains(&hz));
        eprintln!("HZ={hz} ({source:?})");
        // /proc/timer_list is root's: the measurement is checked where it can be read.
        if let Ok(measured) = measured_hz() {
            assert_eq!(measured, hz, "the config and the measurement agree");
        }
        Ok(())
    }
}
