//! `hubroute import --from FILE [--out FILE]`: an IoT hub's routing (ARM template, `az bicep
//! build` output or `az iot hub show` output) as a commented hubroute configuration. The mapping
//! lives in `hubroute-migrate`; this file reads, writes and reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Arguments of `hubroute import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The hub's JSON: an ARM template or resource JSON with a `Microsoft.Devices/IotHubs`
    /// resource, the output of `az iot hub show`, or of `az bicep build` for a Bicep file.
    #[arg(long = "from", value_name = "FILE")]
    from: PathBuf,
    /// Where to write the configuration; `-` writes to stdout.
    #[arg(long, value_name = "FILE", default_value = "hubroute.toml")]
    out: PathBuf,
    /// The hub to import when the file holds several.
    #[arg(long)]
    hub: Option<String>,
    /// Replace `--out` if it exists.
    #[arg(long)]
    force: bool,
}

/// Writes the configuration and prints a summary, every warning and the environment variables to
/// set on stderr. Exits 0 when written (warnings or not), 2 when the input has no usable hub.
pub(crate) fn run(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.from)
        .with_context(|| format!("reading {}", args.from.display()))?;
    let source = args.from.display().to_string();
    let document: serde_json::Value = match serde_json::from_str(&text) {
        Ok(document) => document,
        Err(error) => {
            let hint = if args.from.extension().is_some_and(|e| e == "bicep") {
                " (a Bicep file: run `az bicep build --file <file>` and import the JSON it writes)"
            } else {
                ""
            };
            eprintln!("error: {source} is not JSON: {error}{hint}");
            return Ok(ExitCode::from(2));
        }
    };
    let imported = match hubroute_migrate::import(&document, &source, args.hub.as_deref()) {
        Ok(imported) => imported,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let destination = if args.out.as_os_str() == "-" {
        print!("{}", imported.toml);
        "stdout".to_owned()
    } else {
        if args.out.exists() && !args.force {
            eprintln!(
                "error: {} exists; pass --force to replace it, or choose another --out",
                args.out.display()
            );
            return Ok(ExitCode::from(2));
        }
        std::fs::write(&args.out, &imported.toml)
            .with_context(|| format!("writing {}", args.out.display()))?;
        args.out.display().to_string()
    };
    let counts = imported.counts;
    eprintln!(
        "imported {source} into {destination}: {} endpoints, {} of {} routes, fallback {}, {} enrichments",
        counts.endpoints,
        counts.routes,
        counts.routes_in_input,
        if counts.fallback {
            "enabled"
        } else {
            "disabled"
        },
        counts.enrichments,
    );
    if !imported.warnings.is_empty() {
        eprintln!(
            "{} warnings (also commented in the file):",
            imported.warnings.len()
        );
        for warning in &imported.warnings {
            eprintln!("  warning: {warning}");
        }
    }
    eprintln!("set these environment variables, then run `hubroute check --config {destination}`:");
    for variable in &imported.environment {
        let only = if variable.commented_out {
            " (only for a commented-out block)"
        } else {
            ""
        };
        eprintln!("  {}{only}: {}", variable.name, variable.description);
    }
    Ok(ExitCode::SUCCESS)
}
