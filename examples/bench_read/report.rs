//! The benchmark's results: rows per section, the markdown table with the machine it ran
//! on, and the wait for an idle machine before each measurement.

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::common::bail_if_interrupted;
use crate::swarm::Payload;
use crate::{PIECE_KB, SEEDERS, SIZE_MB, command_line, tool_version};

/// Before each measurement: wait until other work uses at most 6% of the CPUs over half
/// a second (the lab's `wait_idle` threshold: 6 of 100 jiffies), for at most 2 minutes;
/// a run that had to start anyway says how busy the machine was.
const IDLE_SAMPLE: Duration = Duration::from_millis(500);
const IDLE_BUSY_SHARE: f64 = 0.06;
const IDLE_WAIT: Duration = Duration::from_secs(120);

/// The bar chart of section 1, in SVG user units (pixels).
const LABEL_WIDTH: f64 = 520.0;
const BAR_WIDTH: f64 = 360.0;
const ROW_HEIGHT: f64 = 26.0;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Cold,
    Ttfb,
    Cached,
    Memory,
    Seek,
}

impl Section {
    const ALL: [Section; 5] = [
        Section::Cold,
        Section::Ttfb,
        Section::Cached,
        Section::Memory,
        Section::Seek,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Section::Cold => "1. Cold sequential read of the 1 GiB file (MiB/s)",
            Section::Ttfb => "2. Time to first byte: 64 KiB at 20 random offsets (ms)",
            Section::Cached => "3. Cached re-read (MiB/s)",
            Section::Memory => "4. Peak RSS of the mount",
            Section::Seek => "5. Seek and start-up in a moov-at-end MP4, cold mount vs disk (ms)",
        }
    }
}

#[derive(Default)]
pub struct Report {
    rows: Vec<(Section, String, String, String)>,
    /// CPU share that other work used just before the current measurement.
    background_load: f64,
}

impl Report {
    /// Waits (up to `IDLE_WAIT`) until other work leaves both CPUs idle, as the lab's
    /// `wait_idle` does, and remembers the load it last saw for the rows that follow.
    pub fn settle(&mut self) -> Result<()> {
        let end = Instant::now() + IDLE_WAIT;
        loop {
            self.background_load = cpu_busy_share(IDLE_SAMPLE)?;
            if self.background_load <= IDLE_BUSY_SHARE || Instant::now() >= end {
                return Ok(());
            }
            bail_if_interrupted()?;
        }
    }

    pub fn add(&mut self, section: Section, tool: &str, result: String, mut note: String) {
        if self.background_load > IDLE_BUSY_SHARE {
            let _ = write!(
                note,
                "; other work used {:.0}% of the CPUs before this run",
                self.background_load * 100.0
            );
        }
        println!("{}: {tool}: {result} ({note})", section.title());
        self.rows.push((section, tool.to_string(), result, note));
    }

    /// A measurement that could not be made, with why.
    pub fn failed(&mut self, section: Section, tool: &str, why: &str) {
        self.add(section, tool, "failed".into(), why.to_string());
    }

    pub fn to_markdown(&self, machine: &str) -> String {
        let mut md = format!("# bench_read\n\n{machine}\n");
        for section in Section::ALL {
            let _ = write!(
                md,
                "\n## {}\n\n| tool | result | note |\n|---|---|---|\n",
                section.title()
            );
            for (_, tool, result, note) in self.rows.iter().filter(|r| r.0 == section) {
                let _ = writeln!(md, "| {tool} | {result} | {} |", note.replace('|', "\\|"));
            }
        }
        md
    }

    /// Section 1 as a horizontal bar chart (hand-written SVG): one bar per row whose
    /// result is "N MiB/s", scaled to the fastest.
    pub fn cold_svg(&self) -> String {
        let bars: Vec<(&str, f64)> = self
            .rows
            .iter()
            .filter(|r| r.0 == Section::Cold)
            .filter_map(|(_, tool, result, _)| {
                let rate = result.strip_suffix(" MiB/s")?.parse().ok()?;
                Some((tool.as_str(), rate))
            })
            .collect();
        let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
        let width = LABEL_WIDTH + BAR_WIDTH + 80.0;
        let height = ROW_HEIGHT * (bars.len() as f64 + 1.5);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"8\" y=\"18\" font-weight=\"bold\">{}</text>\n",
            xml_escape(Section::Cold.title())
        );
        for (i, (tool, rate)) in bars.iter().enumerate() {
            let y = ROW_HEIGHT * (i as f64 + 1.0);
            let w = BAR_WIDTH * rate / max;
            let _ = write!(
                svg,
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>\n\
                 <rect x=\"{LABEL_WIDTH}\" y=\"{:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"#4878a8\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.0}\">{rate:.0} MiB/s</text>\n",
                LABEL_WIDTH - 6.0,
                y + 17.0,
                xml_escape(tool),
                y + 4.0,
                ROW_HEIGHT - 8.0,
                LABEL_WIDTH + w + 4.0,
                y + 17.0,
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "")
}

/// The header of the results: what was measured, where, with what.
pub fn machine_description(payload: &Payload) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let commit = command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    format!(
        "- date: {}\n- machine: {nproc} CPUs ({cpu}), kernel {}, all processes on this machine, loopback only\n\
         - swarmfs: commit {commit}\n\
         - torrent: {} ({} MiB, {} KiB pieces, info hash {}); opentracker; seeders: {}\n\
         - command: `cargo run --release --example bench_read`",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        kernel.trim(),
        payload.name,
        SIZE_MB,
        PIECE_KB,
        payload.info_hash,
        SEEDERS
            .iter()
            .map(|c| tool_version(c))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The share of all CPUs' time spent busy (not idle or iowait) over `sample`, from /proc/stat.
fn cpu_busy_share(sample: Duration) -> Result<f64> {
    fn jiffies() -> Result<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Ok((total - idle, total))
    }
    let (busy0, total0) = jiffies()?;
    std::thread::sleep(sample);
    let (busy1, total1) = jiffies()?;
    Ok((busy1 - busy0) as f64 / (total1 - total0).max(1) as f64)
}
