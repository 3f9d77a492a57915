"""What the Prefect UI shows of a pipeline call besides its tasks: each side names the other (the MLflow run is
tagged with the flow run, the flow run links to the MLflow run), and Table 2 in the flow run's Artifacts tab."""
import os

from pairs import tables

from . import links


def link_prefect(tracker):
    """The pipeline's MLflow run tagged with the Prefect flow run (its id, name and, with a Prefect server, its UI
    page); the flow run gets a link artifact to the MLflow run."""
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run

    tags = {"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name}
    if os.environ.get("PREFECT_API_URL"):  # a temporary server's pages are gone with this process
        tags["prefect.flow_run_url"] = flow_run.ui_url
    tracker.set_tags(tracker.run_id, {k: v for k, v in tags.items() if v})
    create_link_artifact(links.run_page(tracker), link_text=f"MLflow run {tracker.run_id}", key="mlflow-run",
                         description="The pipeline's run in MLflow: its stages, the comparison rows and every fit.")


def publish_table2(t2, tracker):
    """Table 2 (pairs.tables.table2) as a markdown artifact of the flow run, with the MLflow link."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(f"# Table 2 (final rounds)\n\n{tables.markdown(tables.display(t2, 'table2'))}\nMLflow: "
                             f"[the pipeline run]({links.run_page(tracker)}), its `final` stage holds one row run per "
                             "configuration.\n", key="table-2", description="Table 2 of this pipeline call")
