from services.split import build_spec
from shared.service import WorkerSettings, run_stage_service

if __name__ == "__main__":
    run_stage_service(build_spec, WorkerSettings)
