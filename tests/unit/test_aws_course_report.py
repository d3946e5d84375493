"""The course report with aws instance types in the notebooks' names (03_training-ml.m5.xlarge.ipynb)."""


def test_report_of_a_run_with_dotted_instance_types(tmp_path):
    """nbformat validates cell ids against ^[a-zA-Z0-9-_]+$ (nbformat/v4/nbformat.v4.5.schema.json, cell_id)."""
    import nbformat

    from cloudalliance import course
    from cloudalliance.runs import open_run

    run = open_run("r1", tmp_path, "aws")
    (run.path / "notebooks").mkdir(parents=True, exist_ok=True)
    results = []
    for instance in ("ml.m5.xlarge", "ml.c5.4xlarge"):
        output = f"03_training-{instance}.ipynb"
        nb = nbformat.v4.new_notebook()
        nb.cells.append(nbformat.v4.new_code_cell(f"print('{instance}')"))
        nbformat.write(nb, run.path / "notebooks" / output)
        results.append(course.JobResult(course.Job("03_training.ipynb", output, {"INSTANCE_TYPE": instance}), "passed"))
    report = course.write_report(run, results, tmp_path / "aws.yaml")
    text = report.read_text()
    assert "03_training-ml.m5.xlarge.ipynb" in text and "03_training-ml.c5.4xlarge.ipynb" in text
