"""CTERNet family: training and evaluation stages, their figures, report and sentiment-map views."""
