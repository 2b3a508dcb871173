//! The classic Prometheus text format, rewritten from the OpenMetrics text the registry encodes.

/// OpenMetrics text as the classic Prometheus format: counters' HELP and TYPE name the
/// `_total` sample, and there is no `# EOF`. Only what prometheus-client emits is handled.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let header = ["# HELP ", "# TYPE "].into_iter().find(|prefix| line.starts_with(prefix));
        match header {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    text.push_str(&format!("{prefix}{name}_total {tail}\n"));
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_in_help_and_type() {
        let openmetrics = "# HELP rstwatch_frames Frames.\n# TYPE rstwatch_frames counter\nrstwatch_frames_total 3\n# HELP rstwatch_fill Fill.\n# TYPE rstwatch_fill gauge\nrstwatch_fill 0.5\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP rstwatch_frames_total Frames.\n# TYPE rstwatch_frames_total counter\nrstwatch_frames_total 3\n# HELP rstwatch_fill Fill.\n# TYPE rstwatch_fill gauge\nrstwatch_fill 0.5\n"
        );
    }
}
