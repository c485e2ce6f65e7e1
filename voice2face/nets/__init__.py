"""Plain ``nn.Module`` networks (no Lightning here); the methods in ``voice2face.methods`` wire
them into training."""

from voice2face.nets.cae import CAECritic, GatedConvTranspose2d, GatedUNet
from voice2face.nets.face import FaceEncoder, FaceTrunk
from voice2face.nets.gan import FaceCritic, FaceGenerator
from voice2face.nets.heads import CosineClassifier, CovariateHeads, FeatureHead
from voice2face.nets.layout import faces_channels_last, to_channels_last
from voice2face.nets.speech2face import FaceDecoder, SpectrogramEncoder
from voice2face.nets.voice import VoiceEmbedder, perturb_embedding

# the nets a checkpoint may describe by class name (``checkpoint["nets"]``), so that a loader
# rebuilds them from their constructor arguments without the method that trained them
NETS = {net.__name__: net for net in (CAECritic, CosineClassifier, CovariateHeads, FaceCritic,
                                      FaceDecoder, FaceEncoder, FaceGenerator, FaceTrunk,
                                      FeatureHead, GatedUNet, SpectrogramEncoder, VoiceEmbedder)}

__all__ = ["NETS", "CAECritic", "CosineClassifier", "CovariateHeads", "FaceCritic", "FaceDecoder",
           "FaceEncoder", "FaceGenerator", "FaceTrunk", "FeatureHead", "GatedConvTranspose2d",
           "GatedUNet",
           "SpectrogramEncoder", "VoiceEmbedder",
           "faces_channels_last", "perturb_embedding", "to_channels_last"]
