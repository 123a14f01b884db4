from states.questionnaire import Questionnaire

__all__ = ["Questionnaire"]
