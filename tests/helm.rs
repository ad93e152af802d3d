//! The Helm chart (helm/grm-cluster): linted strictly, rendered with the default values and
//! with each file in helm/grm-cluster/ci/, every object validated against Kubernetes' schemas,
//! and the rendered output asserted on, by tests/helm/check_chart.py. It runs offline through
//! helm-python-sdk and kubernetes-validate in .venv-test (installed by scripts/setup.sh).

use std::path::Path;
use std::process::Command;

#[test]
fn chart_lints_renders_and_validates() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let python = repo.join(".venv-test/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/setup.sh`",
        python.display()
    );
    let out = Command::new(&python)
        .arg("tests/helm/check_chart.py")
        .current_dir(&repo)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tests/helm/check_chart.py failed ({}):\n{text}",
        out.status
    );
}
