"""The built-in demonstration (see README, Quickstart)."""

from absl import app, flags

from effdr_tf import cli

_OUT = flags.DEFINE_string("out_dir", "out/demo", "Where the demo writes its outputs.")


@cli.entry_point
def main(argv):
    del argv
    from effdr_tf import demo

    demo.run(_OUT.value)


if __name__ == "__main__":
    app.run(main)
