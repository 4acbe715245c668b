"""Official class lists of the supported benchmarks (used to *check* table headers, never to read them)."""

from __future__ import annotations

#: CXR-LT 2023 (MIMIC-CXR-JPG), the 26 label columns in official CSV order.
CXR_LT_2023_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Calcification of the Aorta",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged Cardiomediastinum",
    "Fibrosis",
    "Fracture",
    "Hernia",
    "Infiltration",
    "Lung Lesion",
    "Lung Opacity",
    "Mass",
    "No Finding",
    "Nodule",
    "Pleural Effusion",
    "Pleural Other",
    "Pleural Thickening",
    "Pneumomediastinum",
    "Pneumonia",
    "Pneumoperitoneum",
    "Pneumothorax",
    "Subcutaneous Emphysema",
    "Support Devices",
    "Tortuous Aorta",
)

#: CXR-LT 2023 metadata columns that precede the image path column.
CXR_LT_2023_METADATA: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "ViewPosition",
    "ViewCodeSequence_CodeMeaning",
)

#: Positive training images per class in the CXR-LT 2023 training split (264,849 images), official order.
#: Published in the challenge overview (Holste et al., 2023); used by the synthetic generator's long tail.
CXR_LT_2023_TRAIN_COUNTS: dict[str, int] = {
    "Atelectasis": 54126,
    "Calcification of the Aorta": 3464,
    "Cardiomegaly": 61381,
    "Consolidation": 12832,
    "Edema": 30700,
    "Emphysema": 3417,
    "Enlarged Cardiomediastinum": 24169,
    "Fibrosis": 961,
    "Fracture": 9473,
    "Hernia": 3232,
    "Infiltration": 8177,
    "Lung Lesion": 2069,
    "Lung Opacity": 63848,
    "Mass": 4379,
    "No Finding": 33537,
    "Nodule": 6102,
    "Pleural Effusion": 55363,
    "Pleural Other": 531,
    "Pleural Thickening": 2684,
    "Pneumomediastinum": 638,
    "Pneumonia": 38545,
    "Pneumoperitoneum": 424,
    "Pneumothorax": 11932,
    "Subcutaneous Emphysema": 1928,
    "Support Devices": 71362,
    "Tortuous Aorta": 2801,
}
CXR_LT_2023_TRAIN_IMAGES = 264849

#: NIH ChestX-ray14: the 14 findings and "No Finding", as spelled in `Finding Labels`.
NIH_CXR14_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "No Finding",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
