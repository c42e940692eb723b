//! ONBUILD, as BuildKit runs it: a parent stage's triggers run at the start of a stage built `FROM` it,
//! as that stage's own instructions (expanded in its scope), and its image config keeps only its own
//! ONBUILD lines, so a grandchild runs the child's triggers and never the parent's again.

use serde_json::Value;

use crate::support::{Kiln, Layout, context, tempdir, unpack};

const DOCKERFILE: &str = "FROM base AS parent
ARG WHO=parent
ONBUILD ARG WHO=child
ONBUILD RUN echo \"built by $WHO\" >> /trigger
ONBUILD WORKDIR /app
FROM parent AS child
ONBUILD RUN pwd >> /own
RUN echo \"after in $(pwd)\" > /after
FROM child
RUN cat /own /trigger > /seen
";

#[test]
fn a_parent_stages_triggers_run_in_the_child_and_are_not_inherited() {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let build = |target: Option<&str>| {
        let oci = tempdir("oci-");
        let mut kiln = Kiln::new().with_base();
        if let Some(t) = target {
            kiln = kiln.args(["--target", t]);
        }
        kiln.arg("-o")
            .arg(format!("type=oci,dest={}", oci.path().display()))
            .arg(ctx.path())
            .run()
            .success();
        oci
    };

    let child = build(Some("child"));
    let unpacked = unpack(child.path());
    let read = |p: &str| std::fs::read_to_string(unpacked.rootfs.join(p)).unwrap();
    assert_eq!(
        read("trigger"),
        "built by child\n",
        "the trigger's ARG, in the child"
    );
    assert_eq!(
        read("after"),
        "after in /app\n",
        "the trigger's WORKDIR came first"
    );
    assert!(!unpacked.rootfs.join("own").exists());
    let config = Layout::new(child.path()).config();
    assert_eq!(
        config["config"]["OnBuild"],
        serde_json::json!(["RUN pwd >> /own"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/app");

    let last = build(None);
    let unpacked = unpack(last.path());
    assert_eq!(
        std::fs::read_to_string(unpacked.rootfs.join("seen")).unwrap(),
        "/app\nbuilt by child\n",
        "the child's trigger ran once; the parent's did not run again"
    );
    let onbuild = &Layout::new(last.path()).config()["config"]["OnBuild"];
    assert!(
        matches!(onbuild, Value::Null) || onbuild == &serde_json::json!([]),
        "{onbuild}"
    );
}
