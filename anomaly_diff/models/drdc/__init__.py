from anomaly_diff.models.drdc.fusion import FusionConfig
from anomaly_diff.models.drdc.lightning_base import DRDCBase
from anomaly_diff.models.drdc.lightning_model import DRDC
from anomaly_diff.models.drdc.lightning_refinement import DRDCRefinement
from anomaly_diff.models.drdc.torch_model import DRDCModel, DRDCOutput, InpaintingConfig

__all__ = ["DRDC", "DRDCBase", "DRDCModel", "DRDCOutput", "DRDCRefinement", "FusionConfig", "InpaintingConfig"]
