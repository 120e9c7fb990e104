"""data.gc_policy: the collector paused around work that makes many objects (frozen after it, and skipped at
exit, only in a process a command line owns); the cluster CLI loads the annotation app only when asked for."""

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

from data import gc_policy

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_inside_another_process_the_collector_is_paused_and_nothing_frozen():
    """The tests' own process (CliRunner) never called for_this_process: paused for the block, never frozen."""
    assert not gc_policy.owns_process()
    frozen = gc.get_freeze_count()
    with gc_policy.paused_collection():
        assert not gc.isenabled()
        with gc_policy.paused_collection():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_a_command_line_process_imports_without_the_collector_then_freezes():
    proc = _python("""
        import gc
        from data.gc_policy import for_this_process, owns_process, paused_collection
        for_this_process()
        before = gc.get_freeze_count()
        with paused_collection():
            inside = gc.isenabled()
            import json, email.parser  # anything not imported yet
        print(owns_process(), inside, gc.isenabled(), gc.get_freeze_count() > before)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False", "True", "True"]


def test_collection_of_cycles_goes_on_after_the_imports():
    """Freezing keeps what the imports made out of later collections; what the work makes is still collected."""
    proc = _python("""
        import gc
        from data.gc_policy import for_this_process, paused_collection
        for_this_process()
        with paused_collection():
            import json
        class C:
            def __del__(self):
                print("collected", flush=True)
        a = C(); a.self = a; del a
        gc.collect()
        print("after")
    """)
    assert proc.stdout.split() == ["collected", "after"], proc.stderr


def test_the_last_collection_at_exit_is_skipped_only_for_a_command_line():
    code = """
        import sys
        from data.gc_policy import for_this_process
        if {own}:
            for_this_process()
        class C:
            def __del__(self):
                print("collected at exit", flush=True)
        a = C(); a.self = a; del a
    """
    assert "collected at exit" not in _python(code.format(own=True)).stdout
    assert "collected at exit" in _python(code.format(own=False)).stdout


def test_cluster_optics_does_not_import_the_annotation_app():
    proc = _python("""
        import sys
        import cluster.__main__ as m
        from click.testing import CliRunner
        CliRunner().invoke(m.cli, ["optics", "--help"])
        print("cluster.annotate.app" in sys.modules, "flask" in sys.modules)
        out = CliRunner().invoke(m.cli, ["--help"]).output  # lists every command, the lazy ones too
        print(sorted(n for n in ("annotate", "accept") if f"  {n} " in out))
        print("cluster.annotate.app" in sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["False False", "['accept', 'annotate']", "True"]
