"""Runs the thesis's tables (or a RandAugment N x M search) and tabulates ours beside its figures.

python experiments.py --out=EXP --rows='4.1/*' --data=cifar10=CIFAR10_TFREC
python experiments.py --out=EXP --rows='4.3/*,4.5/*' --data=kaggle_dr=K,aptos2019=A \\
    --weights=b5=tf_efficientnet_b5.pth,b5-ap=...,b5-ns=... --gpus=0,1,2,3
python experiments.py --out=EXP --print_commands ...     # one command per row, for a scheduler
python experiments.py --out=SEARCH --search=randaugment --recipe=configs/demo.py \\
    --data=TFREC --num_layers=1,2,3 --magnitudes=5,10,15
"""

from absl import app, flags

from effdr_tf import cli

_OUT = flags.DEFINE_string("out", None, "The experiments folder.", required=True)
_ROWS = flags.DEFINE_list("rows", ["*"], "Thesis rows to run: names or patterns (4.1/*).")
_DATA = flags.DEFINE_list("data", [], "KEY=DIR builder outputs (cifar10, cifar100, kaggle_dr, "
                          "aptos2019); a bare DIR for a search.")  # fmt: skip
_WEIGHTS = flags.DEFINE_list("weights", [], "KEY=FILE checkpoints (b5, b5-ap, b5-ns, imagenet).")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every run.")
_GPUS = flags.DEFINE_list("gpus", [], "Run one row per GPU at a time (CUDA_VISIBLE_DEVICES).")
_PRINT = flags.DEFINE_bool("print_commands", False, "Print one command per row and exit.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 200, "eval.py bootstrap rounds.", lower_bound=0)
_SEARCH = flags.DEFINE_enum("search", None, ["randaugment"], "Run a search instead of rows.")
_RECIPE = flags.DEFINE_string("recipe", "configs/demo.py", "--search: the recipe searched.")
_NUM_LAYERS = flags.DEFINE_list("num_layers", ["1", "2", "3"], "--search: values of N.")
_MAGNITUDES = flags.DEFINE_list("magnitudes", ["5", "10", "15"], "--search: values of M.")
_OP_WEIGHTS = flags.DEFINE_list("op_weights", ["reference"], "--search: op weight sets.")


@cli.entry_point
def main(argv):
    del argv
    import sys

    from effdr_tf.experiments import command

    return command.main(
        sys.argv,
        out=_OUT.value,
        rows=_ROWS.value,
        data=_DATA.value,
        weights=_WEIGHTS.value,
        settings=_SET.value,
        gpus=_GPUS.value,
        print_commands=_PRINT.value,
        bootstrap=_BOOTSTRAP.value,
        search=_SEARCH.value,
        recipe=_RECIPE.value,
        num_layers=_NUM_LAYERS.value,
        magnitudes=_MAGNITUDES.value,
        op_weights=_OP_WEIGHTS.value,
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
