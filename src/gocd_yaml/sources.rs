//! Checks across every config source at once, which no single document can make: a pipeline
//! defined twice, a dependency on a pipeline or stage that exists nowhere, a dependency
//! cycle, and an environment naming a pipeline that exists nowhere or is in another one.

use std::collections::HashMap;

use crate::domain::pipeline_config::{ConfigDocument, ConfigIssue, PipelineConfig};

/// Errors across `sources` (name, document), each with the index of the source it belongs to.
pub fn check_sources(sources: &[(&str, &ConfigDocument)]) -> Vec<(usize, ConfigIssue)> {
    let mut issues = Vec::new();
    // Lowercased name → (source index, pipeline), the first definition winning.
    let mut pipelines: HashMap<String, (usize, &PipelineConfig)> = HashMap::new();
    for (index, (_, document)) in sources.iter().enumerate() {
        for pipeline in &document.pipelines {
            let key = pipeline.name.to_ascii_lowercase();
            match pipelines.get(&key) {
                Some((first, _)) => issues.push((
                    index,
                    issue(
                        format!("pipelines.{}", pipeline.name),
                        format!(
                            "pipeline {} is also defined in {}",
                            pipeline.name, sources[*first].0
                        ),
                    ),
                )),
                None => {
                    pipelines.insert(key, (index, pipeline));
                }
            }
        }
    }
    // Lowercased pipeline name → the environment it is in first; environments of one name in
    // several sources are one environment, as GoCD merges them.
    let mut placed: HashMap<String, &str> = HashMap::new();
    for (index, (_, document)) in sources.iter().enumerate() {
        for pipeline in &document.pipelines {
            for (material, upstream, stage, _) in pipeline.dependencies() {
                let path = format!("pipelines.{}.materials.{}", pipeline.name, material.name);
                match pipelines.get(&upstream.to_ascii_lowercase()) {
                    None => issues.push((
                        index,
                        issue(
                            format!("{path}.pipeline"),
                            format!("upstream pipeline {upstream} is not defined"),
                        ),
                    )),
                    Some((_, found)) if found.stage(stage).is_none() => issues.push((
                        index,
                        issue(
                            format!("{path}.stage"),
                            format!("upstream pipeline {upstream} has no stage {stage}"),
                        ),
                    )),
                    Some(_) => {}
                }
            }
        }
        for environment in &document.environments {
            for name in &environment.pipelines {
                let path = format!("environments.{}.pipelines", environment.name);
                if !pipelines.contains_key(&name.to_ascii_lowercase()) {
                    issues.push((
                        index,
                        issue(
                            path.clone(),
                            format!(
                                "environment {} names pipeline {name}, which is not defined",
                                environment.name
                            ),
                        ),
                    ));
                }
                if let Some(other) = placed.insert(name.to_ascii_lowercase(), &environment.name)
                    && !other.eq_ignore_ascii_case(&environment.name)
                {
                    issues.push((index, issue(path, format!("pipeline {name} is in environments {other} and {}; a pipeline is in one at most", environment.name))));
                }
            }
        }
    }
    issues.extend(cycles(&pipelines));
    issues
}

fn issue(path: String, message: String) -> ConfigIssue {
    ConfigIssue {
        path,
        line: None,
        message,
    }
}

/// Each dependency cycle once, on the source of the pipeline it is first found from.
fn cycles(pipelines: &HashMap<String, (usize, &PipelineConfig)>) -> Vec<(usize, ConfigIssue)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Done,
    }
    let mut names: Vec<&String> = pipelines.keys().collect();
    names.sort();
    let mut marks: HashMap<&str, Mark> = names.iter().map(|n| (n.as_str(), Mark::Unseen)).collect();
    let mut found = Vec::new();
    for start in names {
        if marks[start.as_str()] != Mark::Unseen {
            continue;
        }
        // Iterative depth-first search: (pipeline, index of its next upstream to look at).
        let mut path: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        marks.insert(start.as_str(), Mark::OnPath);
        while let Some((name, next)) = path.last().copied() {
            let (_, pipeline) = pipelines[name];
            let upstreams: Vec<String> = pipeline
                .dependencies()
                .map(|(_, up, _, _)| up.to_ascii_lowercase())
                .collect();
            let Some(upstream) = upstreams.get(next) else {
                marks.insert(name, Mark::Done);
                path.pop();
                continue;
            };
            path.last_mut().expect("the path is not empty").1 += 1;
            let Some((key, _)) = pipelines.get_key_value(upstream) else {
                continue;
            };
            match marks[key.as_str()] {
                Mark::Unseen => {
                    marks.insert(key.as_str(), Mark::OnPath);
                    path.push((key.as_str(), 0));
                }
                Mark::OnPath => {
                    let from = path
                        .iter()
                        .position(|(n, _)| *n == key.as_str())
                        .expect("on the path");
                    let mut cycle: Vec<&str> = path[from..]
                        .iter()
                        .map(|(n, _)| pipelines[*n].1.name.as_str())
                        .collect();
                    cycle.push(pipelines[key.as_str()].1.name.as_str());
                    let (source, first) = pipelines[key.as_str()];
                    found.push((
                        source,
                        issue(
                            format!("pipelines.{}.materials", first.name),
                            format!(
                                "dependency cycle: {} (each depends on the one after it)",
                                cycle.join(" → ")
                            ),
                        ),
                    ));
                }
                Mark::Done => {}
            }
        }
    }
    found
}
