"""The human view of results no CLI test reaches cheaply (the demo takes minutes)."""

from activeflow.views import human_view


def test_the_demo_lists_what_it_wrote_after_its_table():
    files = {"report": "activeflow-demo/report.json", "learning_curve": "activeflow-demo/learning_curve.png"}
    assert human_view("demo", files).splitlines() == [
        "report          activeflow-demo/report.json",
        "learning curve  activeflow-demo/learning_curve.png",
    ]


def test_a_command_without_a_view_has_none():
    assert human_view("serve", "stopped") is None
