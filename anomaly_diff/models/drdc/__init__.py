from anomaly_diff.models.drdc.lightning_model import DRDC, DRDCBase, DRDCOutput, DRDCRefinement

__all__ = ["DRDC", "DRDCBase", "DRDCOutput", "DRDCRefinement"]
