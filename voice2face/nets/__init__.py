"""Plain ``nn.Module`` networks (no Lightning here); the methods in ``voice2face.methods`` wire
them into training."""

from voice2face.nets.face import FaceEncoder, FaceTrunk
from voice2face.nets.gan import FaceCritic, FaceGenerator
from voice2face.nets.heads import CosineClassifier, CovariateHeads
from voice2face.nets.voice import VoiceEmbedder, perturb_embedding

__all__ = ["CosineClassifier", "CovariateHeads", "FaceCritic", "FaceEncoder", "FaceGenerator",
           "FaceTrunk", "VoiceEmbedder", "perturb_embedding"]
