from services.train import build_spec
from services.train.settings import TrainSettings
from shared.service import run_stage_service

if __name__ == "__main__":
    run_stage_service(build_spec, TrainSettings)
