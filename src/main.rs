use clap::Parser;
use tracing_subscriber::EnvFilter;

use ferrocd::Application;
use tokio_util::sync::CancellationToken;

use ferrocd::config::{AgentArgs, Cli, Command, Config, CopyArgs, DbCommand};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Serve(args)) => serve(Config::from(args)).await,
        None => serve(Config::from(cli.serve)).await,
        Some(Command::Agent(args)) => agent(args).await,
        Some(Command::Db(db)) => match db.command {
            DbCommand::Copy(args) => db_copy(args).await,
        },
    };
    if let Err(error) = outcome {
        eprintln!("ferrocd: {error}");
        std::process::exit(1);
    }
}

async fn agent(args: AgentArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("stopping the agent");
        stop.cancel();
    });
    ferrocd::agent_runtime::run(args, shutdown).await
}

/// `ferrocd db copy`: a line per table as it is written, then the outcome.
async fn db_copy(args: CopyArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let summary = ferrocd::db::copy::copy(&args.from, &args.to, |table| {
        let rows = if table.rows == 1 { "row" } else { "rows" };
        println!("{:>10} {rows:<4}  {}", table.rows, table.table);
    })
    .await
    .map_err(|error| format!("db copy: {error}; nothing was copied"))?;
    println!("{summary}");
    Ok(())
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let app = Application::build(config).await?;
    tracing::info!("ferrocd listening on http://{}", app.local_addr());
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("stopping: closing event streams, finishing in-flight requests");
        shutdown.cancel();
    });
    app.run_until_stopped().await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
